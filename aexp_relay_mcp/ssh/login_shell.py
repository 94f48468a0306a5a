"""Pure: the one seam where a command meets the account's login shell.

sshd never runs a command string itself: it runs the account's login shell as
``$SHELL -c '<string>'``, and that shell may be bash, zsh, ksh, dash, csh/tcsh, fish or
one nobody foresaw. They disagree on almost everything: tcsh cannot keep a quoted
argument that spans lines, fish rejects ``$$``, ``VAR=x cmd`` and ``if ...; fi``, and
reads ``\\\\`` and ``\\'`` inside single quotes as escapes. So every script the relay
sends, a POSIX ``sh`` script, reaches the login shell as one line that all of them read
the same way::

    exec /bin/sh -c 'eval "$(printf "<the script>")"'

where the script's bytes outside ``[A-Za-z0-9 _./,:=+-@]`` travel as octal escapes
(``\\ooo``):

* one physical line, one single-quoted word: inside it no shell substitutes anything
  (``$``, ``"``, ``(`` are literal in sh, csh and fish alike);
* no single quote, no ``!``, no newline anywhere in it, and a backslash only before three
  octal digits: the one thing csh (``\\!``, backslash-newline) and fish (``\\\\``,
  ``\\'``) read as escapes inside single quotes never occurs;
* ``/bin/sh`` turns the escapes back into the script with its builtin ``printf`` (no
  program runs for it: coreutils' ``base64`` cost twice as much) and runs it in the same
  process: ``exec`` keeps the pid sshd started, so ``$$`` in the script is still the
  process the remote kill aims at.

What the login shell prints before it gets to this line (a banner in ``~/.cshrc``, a
greeting in ``config.fish``) comes before the script's start marker and is set aside.
"""

from __future__ import annotations

import os
import re

from ..model.errors import Failure

# One argument of execve() may hold 128 KiB on Linux (MAX_ARG_STRLEN): the login shell
# passes the line to /bin/sh as one. Scripts stay far below this; a longer one is refused
# before anything is sent.
MAX_LINE_BYTES = 120_000
# Bytes that travel as themselves: read alike inside single quotes by every shell, and
# inside /bin/sh's double quotes and printf's format (no $, `, \, %, quote or newline).
LITERAL = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _./,:=+-@")
# every byte -> itself or \ooo, as a str.translate table over latin-1
_ENCODE = {b: chr(b) if b in LITERAL else f"\\{b:03o}" for b in range(256)}

# Login shells that read a command string unlike POSIX sh: the relay works around them.
NOT_POSIX = ("csh", "tcsh", "fish")
POSIX = ("sh", "bash", "dash", "zsh", "ksh", "mksh", "ksh93", "pdksh", "oksh", "yash", "ash")


class CommandTooLong(ValueError):
    """The encoded line would not fit in one argument of the login node's execve()."""


def for_login_shell(script: str) -> str:
    """The line handed to ssh: any login shell runs ``script`` with ``/bin/sh``."""
    payload = script.encode().decode("latin-1").translate(_ENCODE)
    line = f'exec /bin/sh -c \'eval "$(printf "{payload}")"\''
    if len(line) > MAX_LINE_BYTES:
        raise CommandTooLong(
            f"the command is {len(line)} bytes once encoded, more than the {MAX_LINE_BYTES} "
            "one argument may hold on the login node"
        )
    return line


def shell_name(path: str | None) -> str | None:
    """``/usr/bin/tcsh`` -> ``tcsh``; None for nothing usable."""
    if not path:
        return None
    name = os.path.basename(path.strip()).lstrip("-")
    return name if re.fullmatch(r"[A-Za-z0-9_.+-]{1,64}", name) else None


def named_in(printed: str) -> str | None:
    """A shell that named itself in what it printed (``tcsh: ...``, ``-bash: ...``)."""
    for line in printed.splitlines():
        match = re.match(r"-?([a-z0-9]+)(?::\d+)?: ", line.strip())
        if match and match.group(1) in NOT_POSIX + POSIX:
            return match.group(1)
    return None


def worked_around(path: str | None) -> bool:
    """Whether the login shell is one that reads a command unlike POSIX sh."""
    return shell_name(path) in NOT_POSIX


# Where each shell reads its start-up file for a command over ssh, and the guard that
# keeps what only interactive sessions need (banners, exec, slow set-up) out of it.
_RC_FILES = {
    "bash": ("~/.bashrc", "case $- in *i*) ;; *) return ;; esac"),
    "zsh": ("~/.zshenv", "[[ -o interactive ]] || return"),
    "tcsh": ("~/.tcshrc (or ~/.cshrc)", "if ( ! $?prompt ) exit"),
    "csh": ("~/.cshrc", "if ( ! $?prompt ) exit"),
    "fish": ("~/.config/fish/config.fish", "status is-interactive; or return"),
}


def rc_guard(path: str | None) -> tuple[str, str]:
    """The login shell's start-up file for commands over ssh, and the line that ends it
    for non-interactive sessions (what follows it runs only in a terminal)."""
    return _RC_FILES.get(shell_name(path) or "", _RC_FILES["bash"])


def login_shell_failure(shell: str | None, exit_code: int | None, printed: str) -> Failure:
    """ssh logged in and the account's login shell ran, but our line never started: an
    ``exec`` or ``exit`` in a start-up file, a shell nobody foresaw."""
    name = shell_name(shell) or named_in(printed)
    who = f"the account's login shell ({name})" if name else "the account's login shell"
    rc, guard = rc_guard(name)
    return Failure(
        "login_shell_failed",
        f"ssh logged in, but {who} did not run the relay's command: it ended "
        f"with exit code {exit_code} before the command began. Nothing ran.",
        "Run `ssh {host} echo ok` in a terminal: it must print just `ok`. If not, a line in "
        f"the shell's start-up file stops it, usually an `exec` (`exec zsh`) or an `exit`: "
        f"in {rc}, move it below `{guard}`, so it runs only in terminals. A login shell "
        "that is not a shell (a menu, git-shell, a restricted shell) cannot run commands: "
        "ask the admins for bash, zsh, tcsh or fish.",
    )
