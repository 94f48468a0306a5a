"""The one quoting function, and the words a remote command is built from.

Every value that came from outside reaches the remote shell through ``quote()``. Everything
else in a remote command is a ``Raw`` literal written in this package's source.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass


def quote(word: str) -> str:
    """The only quoting function: one shell word the remote sh sees literally."""
    return shlex.quote(word)


@dataclass(frozen=True)
class Raw:
    """A literal piece of shell written in this package's source, never user input."""

    text: str


Word = str | Raw


def render_words(words: Iterable[Word]) -> str:
    return " ".join(w.text if isinstance(w, Raw) else quote(w) for w in words)


def quote_repo(path: str) -> str:
    """Quote a repo path; a leading ``~/`` stays unquoted so the remote shell expands it."""
    if path == "~":
        return "~"
    if path.startswith("~/"):
        rest = path[2:]
        return "~/" + quote(rest) if rest else "~/"
    return quote(path)
