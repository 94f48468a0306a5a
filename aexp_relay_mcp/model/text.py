"""Pure text helpers for what reaches the agent: escaped control characters, redacted
credentials, bounded tails, human sizes."""

from __future__ import annotations

import re
import unicodedata

STDERR_TAIL_LINES = 20
# Where the output cap cut a stream (head and tail kept): written by the process runner,
# recognised by the parsers, which never count what lies across it.
ELISION = "\n[... output truncated ...]\n"
STDERR_TAIL_CHARS = 4000

_CREDENTIALS_IN_URL = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@]+@", re.IGNORECASE)


def clean_text(text: str, *, keep_newlines: bool = False) -> str:
    """Escape terminal control characters so they are shown, never interpreted."""
    out = []
    for ch in text:
        if keep_newlines and ch in "\n\t":
            out.append(ch)
        elif unicodedata.category(ch) == "Cc":
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def human_size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    value = n / 1000
    for unit in ("KB", "MB"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def redact(text: str) -> str:
    """Drop credentials embedded in URLs (https://user:token@host)."""
    return _CREDENTIALS_IN_URL.sub(r"\1***@", text)


def tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    """The last lines, progress meters collapsed, control characters escaped, URLs redacted."""
    rows = [row.rsplit("\r", 1)[-1] for row in text.replace("\r\n", "\n").split("\n")]
    kept = "\n".join([r for r in rows if r.strip()][-lines:])
    if len(kept) > STDERR_TAIL_CHARS:
        kept = kept[-STDERR_TAIL_CHARS:]
    return clean_text(redact(kept), keep_newlines=True)
