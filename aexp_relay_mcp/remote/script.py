"""Pure: the remote command and its status markers.

Every value that came from outside reaches the remote shell through ``quoting.quote()``.
Everything else in a remote command is a literal written here or in ``ops.py``.

The command is a POSIX ``sh`` script. The transport hands it to the account's login
shell, whatever that is, through the one seam (``ssh.login_shell``): the login shell
``exec``s ``/bin/sh``, which decodes it and runs::

    printf '<mark> start <$$> <$SHELL>'; ... >&2        # on both streams
    exec timeout -k GRACE LIMIT sh -c '<script>'      # when coreutils timeout exists

and ``<script>`` is::

    <helpers: b/e (begin/end a step), s (step), f (fail with kind), x (exit)>
    export GIT_TERMINAL_PROMPT=0 GIT_SSH_COMMAND='ssh -o BatchMode=yes' LC_ALL=C ...
    [ -e REPO ] || f repo_missing; [ -d REPO ] || f repo_not_dir; cd -- REPO || f ...
    <op body: steps>
    x $?

Whatever the login shell prints before the start marker (a banner in ~/.bashrc, a
module notice) is set aside, and only text between a step's begin and end markers
reaches its parser. The final ``exit`` marker is the remote command's own exit
status: when it is missing, the command never finished (ssh failed, or it was killed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..model.targets import path_variables
from .quoting import Word, quote, quote_path, render_words

_STEP_NAME_RE = re.compile(r"^[a-z_]+$")


@dataclass(frozen=True)
class Script:
    """An op's body: shell text built only from ``step``/``guard`` and literals."""

    text: str


def step(name: str, *argv: Word) -> str:
    """Run argv as a named step; its output sections end with a marker."""
    if not _STEP_NAME_RE.match(name):
        raise ValueError(f"bad step name {name!r}")
    return f"s {name} {render_words(argv)}"


def step_shell(name: str, text: str) -> str:
    """Run shell text as a named step (stdin /dev/null), like ``step``: for a pipeline,
    which is no argv. ``text`` is shell written in this package; values in it were quoted
    where it was built."""
    if not _STEP_NAME_RE.match(name):
        raise ValueError(f"bad step name {name!r}")
    # one compound command, so that `a && step_shell(...)` chains as `a && step(...)` does
    return f"{{ b {name}; {{ {text}; }} </dev/null; _r=$?; e {name} $_r; (exit $_r); }}"


def guard(kind: str, *argv: Word) -> str:
    """Run argv as step ``guard`` (stdout dropped, stderr kept); if it fails, stop the script
    with failure ``kind``. The client reads git's stderr first: a guard that failed because
    git refused the whole repo (dubious ownership, not a repo) reports that, not ``kind``."""
    if not _STEP_NAME_RE.match(kind):
        raise ValueError(f"bad kind {kind!r}")
    return f"s guard {render_words(argv)} >/dev/null || f {kind}"


REMOTE_ENV: dict[str, str] = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
    "GCM_INTERACTIVE": "never",
    "LC_ALL": "C",
}

# Exit status of the script when a guard fails; the kind travels in the marker.
GUARD_EXIT = 3


def marker(nonce: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{8,64}", nonce):
        raise ValueError("nonce must be lowercase hex")
    return f"@AEXP-{nonce}@"


# Shell helpers every script starts with. Each marker line is printed on both streams
# (kind only on stderr), always starting with a newline of its own:
#   b NAME      begin of step NAME's sections
#   e NAME RC   end of step NAME's sections, with its exit status
#   s NAME ARGV run ARGV as step NAME (stdin /dev/null), between b and e
#   f KIND      a guard failed: report KIND, exit GUARD_EXIT
#   x RC        the script's own exit status
_HELPERS = (
    'b() { printf \'\\n%s begin %s\\n\' "$N" "$1"; printf \'\\n%s begin %s\\n\' "$N" "$1" >&2; }; '
    'e() { printf \'\\n%s end %s %s\\n\' "$N" "$1" "$2"; '
    'printf \'\\n%s end %s %s\\n\' "$N" "$1" "$2" >&2; }; '
    'x() { printf \'\\n%s exit %s\\n\' "$N" "$1"; printf \'\\n%s exit %s\\n\' "$N" "$1" >&2; }; '
    's() { _n=$1; shift; b "$_n"; "$@" </dev/null; _r=$?; e "$_n" "$_r"; return $_r; }; '
    'f() { printf \'\\n%s kind %s\\n\' "$N" "$1" >&2; '
    f"x {GUARD_EXIT}; exit {GUARD_EXIT}; }}; "
)


def build_script(body: Script, repo: str, nonce: str, *, enter: bool = True) -> str:
    env = " ".join(f"{k}={quote(v)}" for k, v in REMOTE_ENV.items())
    prologue = f"{enter_repo(repo)}; " if enter else ""
    return (
        f"N={quote(marker(nonce))}; {_HELPERS}export {env}; {prologue}{body.text}\n"
        "_e=$?; x $_e; exit $_e"
    )


def variables_set(path: str) -> str:
    """Shell that stops with ``path_variable_unset`` (the name in step ``unset``) when a
    variable the path uses is unset or empty on the login node. "" for a path without."""
    return "".join(
        f'[ -n "${{{name}:-}}" ] || {{ b unset; printf %s {name}; e unset 1; '
        "f path_variable_unset; }; "
        for name in path_variables(path)
    )


def enter_repo(repo: str) -> str:
    """cd into the repo, failing with a precise kind when a variable it uses is unset, it is
    not absolute once expanded, missing, or not a directory."""
    r = quote_path(repo)
    absolute = (
        f"case {r} in /*) ;; *) f repo_not_absolute ;; esac; " if path_variables(repo) else ""
    )
    return (
        f"{variables_set(repo)}{absolute}"
        f"[ -e {r} ] || f repo_missing; [ -d {r} ] || f repo_not_dir; "
        f"cd -- {r} 2>/dev/null || f repo_inaccessible"
    )


def start_marker_command(nonce: str) -> str:
    """What runs first: the start marker, with its pid and the account's login shell
    (``$SHELL``, as sshd set it), on both streams.

    Everything the login shell prints before it (banners from ~/.bashrc or ~/.cshrc,
    module notices, fish greetings) comes before this line, and the parser sets it aside.
    """
    mark = quote(marker(nonce))
    line = f'printf \'\\n%s start %s %s\\n\' {mark} "$$" "${{SHELL:-unknown}}"'
    return f"{line}; {line} >&2"


def build_remote_command(
    body: Script,
    repo: str,
    nonce: str,
    *,
    timeout: float,
    grace: float,
    enter: bool = True,
    undo_s: float = 0.0,
) -> str:
    """The script the login node runs (through ``ssh.login_shell``), bounded there by
    coreutils ``timeout``.

    ``timeout`` makes itself a process-group leader whose id is the ``$$`` reported in
    the start marker, so a later kill of that group ends everything the op started. Its
    TERM comes ``grace`` after our own timeout; KILL ``grace`` later, plus ``undo_s`` for
    an op that undoes what it started when it gets TERM.
    """
    script = quote(build_script(body, repo, nonce, enter=enter))
    limit = max(1, int(timeout + grace + 0.999))
    kill_after = max(1, int(grace + undo_s + 0.999))
    return (
        f"{start_marker_command(nonce)}; "
        f"if command -v timeout >/dev/null 2>&1; "
        f"then exec timeout -k {kill_after} {limit} sh -c {script} aexp; "
        f"else exec sh -c {script} aexp; fi"
    )
