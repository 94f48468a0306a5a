"""The one quoting function, and the words a remote command is built from.

Every value that came from outside reaches the remote shell through ``quote()``. Everything
else in a remote command is a ``Raw`` literal written in this package's source.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from ..model.targets import path_parts


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


def quote_path(path: str) -> str:
    """A path on the login node as one shell word: literal text through ``quote()``; a
    leading ``~/`` and ``$NAME`` / ``${NAME}`` references left for the login shell to expand
    (a variable double-quoted: its value is never split or globbed). The path must have
    passed ``model.targets`` validation."""
    words = []
    for kind, text in path_parts(path):
        if kind == "home":
            words.append(text)
        elif kind == "var":
            words.append(f'"${{{text}}}"')
        else:
            words.append(quote(text))
    return "".join(words)


def expands(path: str) -> bool:
    """Whether the login shell changes anything in path (~, or a variable)."""
    return any(kind != "text" for kind, _ in path_parts(path))
