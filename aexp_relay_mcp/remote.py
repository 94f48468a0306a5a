"""Pure: the remote command string, quoting, the status markers, and the ssh argv.

Every value that came from outside reaches the remote shell through ``quote()``,
the one quoting function in the package. Everything else in a remote command is
a literal written in this module or in ``ops.py``.

Shape of the command the login node runs (its login shell, then ``sh``)::

    printf '<mark> start <$$>'; printf '<mark> start <$$>' >&2   # on both streams
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
import shlex
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import RelayValidationError
from .parsing import UnparseableOutput

MAX_HOST_LEN = 255
MAX_REPO_LEN = 4096

# An ssh destination: alias, host, user@host, [v6]:port-less forms. No option
# look-alikes, no whitespace, no shell characters.
_HOST_RE = re.compile(
    r"[A-Za-z0-9_.@%][A-Za-z0-9_.@%-]*"  # alias, host, user@host
    r"|([A-Za-z0-9_.-]+@)?[0-9A-Fa-f:]*:[0-9A-Fa-f:]*"  # an IPv6 literal, e.g. ::1
)
_STEP_NAME_RE = re.compile(r"^[a-z_]+$")


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


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def validate_host(host: str | None) -> str:
    """Refuse anything that ssh could read as an option or a shell could read as syntax."""
    if not host:
        raise RelayValidationError(
            "No ssh host given.",
            hint="Pass {arg:ssh_host} (an ssh alias or user@host) or set AEXP_RELAY_SSH_HOST.",
        )
    if len(host) > MAX_HOST_LEN:
        raise RelayValidationError(
            f"ssh host is {len(host)} characters long; the limit is {MAX_HOST_LEN}.",
            hint="Pass {arg:ssh_host} as an ssh alias from ~/.ssh/config.",
        )
    if host.startswith("-"):
        raise RelayValidationError(
            f"ssh host {host!r} starts with '-', so ssh would read it as an option.",
            hint="Pass {arg:ssh_host} as a host name or an alias from ~/.ssh/config; options "
            "belong in that file.",
        )
    if not _HOST_RE.fullmatch(host):
        raise RelayValidationError(
            f"ssh host {host!r} contains characters that are not allowed "
            "(whitespace, control or shell characters).",
            hint="Pass {arg:ssh_host} with letters, digits and . _ - @ % only (or an IPv6 "
            "address), e.g. an alias or user@login.hpc.example.",
        )
    return host


def validate_repo(path: str | None) -> str:
    if path is None or not path.strip():
        raise RelayValidationError(
            "No remote repo path given.",
            hint="Pass {arg:remote_repo} (absolute, or starting with ~/) or set "
            "AEXP_RELAY_REMOTE_REPO.",
        )
    if len(path) > MAX_REPO_LEN:
        raise RelayValidationError(
            f"remote repo path is {len(path)} characters long; the limit is {MAX_REPO_LEN}.",
            hint="Pass {arg:remote_repo} as the real path of the checkout on the login node.",
        )
    if _has_control(path):
        raise RelayValidationError(
            f"remote repo path {path!r} contains control characters (newline, NUL, escape, ...).",
            hint="Pass {arg:remote_repo} as the plain path of the checkout on the login node.",
        )
    if not (path.startswith("/") or path == "~" or path.startswith("~/")):
        raise RelayValidationError(
            f"remote repo path {path!r} must be absolute or start with ~/.",
            hint="Pass {arg:remote_repo} as e.g. /home/me/project or ~/project. ~user/ paths "
            "are not accepted.",
        )
    return path


def validate_wandb_dir(path: str) -> str:
    """AEXP_RELAY_WANDB_DIR: relative to the repo, absolute, or ~/...; checked like the repo
    path, and never starting with '-' (it becomes an argument of wandb sync)."""
    value = path.strip()
    problem = ""
    if not value:
        problem = "is empty"
    elif len(value) > MAX_REPO_LEN:
        problem = f"is {len(value)} characters long; the limit is {MAX_REPO_LEN}"
    elif _has_control(value):
        problem = "contains control characters"
    elif value.startswith("-"):
        problem = "starts with '-', so wandb would read it as an option"
    elif value.startswith("~") and not (value == "~" or value.startswith("~/")):
        problem = "uses ~user/, which is not accepted"
    if problem:
        raise RelayValidationError(
            f"AEXP_RELAY_WANDB_DIR={path!r} {problem}.",
            hint="Set it to a directory relative to the repo (default wandb), an absolute "
            "path, or one starting with ~/, e.g. /scratch/me/wandb.",
        )
    return value.rstrip("/") or "/"


# --------------------------------------------------------------------------- script


@dataclass(frozen=True)
class Script:
    """An op's body: shell text built only from ``step``/``guard`` and literals."""

    text: str


def step(name: str, *argv: Word) -> str:
    """Run argv as a named step; its output sections end with a marker."""
    if not _STEP_NAME_RE.match(name):
        raise ValueError(f"bad step name {name!r}")
    return f"s {name} {render_words(argv)}"


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


def enter_repo(repo: str) -> str:
    """cd into the repo, failing with a precise kind when it is missing or not a directory."""
    r = quote_repo(repo)
    return (
        f"[ -e {r} ] || f repo_missing; [ -d {r} ] || f repo_not_dir; "
        f"cd -- {r} 2>/dev/null || f repo_inaccessible"
    )


def start_marker_command(nonce: str) -> str:
    """What the login shell runs first: the start marker, with its pid, on both streams.

    Everything a login shell prints before it (banners from ~/.bashrc, module notices)
    comes before this line, and the parser sets it aside.
    """
    mark = quote(marker(nonce))
    return f"printf '\\n%s start %s\\n' {mark} \"$$\"; printf '\\n%s start %s\\n' {mark} \"$$\" >&2"


def build_remote_command(
    body: Script, repo: str, nonce: str, *, timeout: float, grace: float, enter: bool = True
) -> str:
    """The string handed to ssh: bounded on the login node by coreutils ``timeout``.

    ``timeout`` makes itself a process-group leader whose id is the ``$$`` reported in
    the start marker, so a later kill of that group ends everything the op started.
    """
    script = quote(build_script(body, repo, nonce, enter=enter))
    limit = max(1, int(timeout + grace + 0.999))
    kill_after = max(1, int(grace + 0.999))
    return (
        f"{start_marker_command(nonce)}; "
        f"if command -v timeout >/dev/null 2>&1; "
        f"then exec timeout -k {kill_after} {limit} sh -c {script} aexp; "
        f"else exec sh -c {script} aexp; fi"
    )


KILL_DONE = "aexp-kill:"


def build_kill_command(pgid: int, *, poll_s: float = 0.05, polls: int = 40) -> str:
    """End a remote process group: TERM, then poll until it is gone, and KILL only if it
    outlives ``poll_s * polls`` seconds. Prints ``aexp-kill: gone`` or ``aexp-kill:
    killed`` last. Not an op: the pid is an integer the start marker reported.

    "Gone" means ``kill -0`` fails, or every process left in the group is a zombie (an
    orphan whose reaper is slow, as in some containers): ``ps`` is asked only then.
    """
    if int(pgid) <= 1:
        raise ValueError("refusing to signal process group <= 1")
    p = f"-{int(pgid)}"
    gone = f"{{ echo '{KILL_DONE} gone'; exit 0; }}"
    only_zombies = (
        '_s=$(ps -A -o pgid= -o stat= 2>/dev/null) && [ -n "$_s" ] && '
        f"! printf '%s\\n' \"$_s\" | awk '$1 == {int(pgid)} && $2 !~ /^Z/ {{f = 1}} "
        "END {exit !f}'"
    )
    return (
        f"kill -TERM {p} 2>/dev/null || {gone}; _i=0; "
        f"while [ $_i -lt {int(polls)} ]; do "
        f"sleep {poll_s:g} 2>/dev/null || sleep 1; "
        f"kill -0 {p} 2>/dev/null || {gone}; "
        f"if [ $((_i % 2)) -eq 1 ] && {only_zombies}; then {gone}; fi; "
        "_i=$((_i+1)); done; "
        f"kill -KILL {p} 2>/dev/null; echo '{KILL_DONE} killed'; exit 0"
    )


def build_ssh_argv(
    *,
    ssh_bin: str,
    host: str,
    remote_command: str,
    connect_timeout: float,
    ssh_config: str | None = None,
    verbose_log: Path | None = None,
    extra_options: Sequence[str] = (),
) -> list[str]:
    """``ssh -n -T -o BatchMode=yes ... -- host cmd``. Debug output never goes to our pipe."""
    argv = [
        ssh_bin,
        "-n",
        "-T",
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={max(1, round(connect_timeout))}",
        "-o",
        "ControlMaster=no",
    ]
    for opt in extra_options:
        argv += ["-o", opt]
    if ssh_config:
        argv += ["-F", ssh_config]
    if verbose_log is not None:
        argv += ["-E", str(verbose_log), "-vv"]
    argv += ["--", validate_host(host), remote_command]
    return argv


# --------------------------------------------------------------------------- markers


@dataclass(frozen=True)
class Section:
    name: str
    exit_code: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class ScriptOutput:
    """Remote output cut at the markers.

    | field          | meaning                                                    |
    |----------------|------------------------------------------------------------|
    | started        | the start marker arrived (the login shell ran our command) |
    | remote_pid     | the remote process group, from the start marker            |
    | exit_code      | the script's own status; None: it never reported (killed, dropped) |
    | kind           | a guard's failure kind                                     |
    | sections       | each step's stdout and stderr, between its begin and end   |
    | stdout, stderr | everything after the start marker, markers removed         |
    | shell_stdout, shell_stderr | what the login shell printed before our command |
    """

    started: bool
    exit_code: int | None
    remote_pid: int | None
    kind: str | None
    sections: dict[str, Section] = field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""
    shell_stdout: str = ""
    shell_stderr: str = ""

    def section(self, name: str) -> Section | None:
        return self.sections.get(name)

    def require(self, name: str) -> Section:
        """The step's section, or UnparseableOutput: a parser never guesses a missing one."""
        found = self.sections.get(name)
        if found is None:
            raise UnparseableOutput(f"the output of step {name!r} is missing")
        return found


@dataclass
class _Stream:
    pre: str = ""  # before the start marker
    body: list[str] = field(default_factory=list)  # after it, markers removed
    sections: dict[str, tuple[str, int]] = field(default_factory=dict)
    started: bool = False
    pid: int | None = None
    exit_code: int | None = None
    kind: str | None = None


# Compiled once (a per-call pattern with the nonce in it cost a compile per call); the
# nonce is matched as a group and compared.
_MARKER_LINE = re.compile(r"\n@AEXP-([0-9a-f]{8,64})@ (start|begin|end|exit|kind)((?: \S+)*)\n")


def _read_stream(text: str, nonce: str) -> _Stream:
    stream = _Stream()
    # A marker line always starts with a newline of its own; one is added in front of the
    # text so a marker on the very first line matches too.
    text = "\n" + text
    pos = 1
    open_name: str | None = None
    open_at = 0
    for match in _MARKER_LINE.finditer(text):
        if match.group(1) != nonce:
            continue  # another call's marker, or a look-alike: plain text
        word, args = match.group(2), match.group(3).split()
        if not stream.started:
            if word != "start":
                continue  # a marker look-alike printed by the login shell: part of its text
            stream.started = True
            stream.pre = text[1 : match.start()]
            stream.pid = int(args[0]) if args and args[0].isdigit() else None
            pos = match.end()
            continue
        chunk = text[pos : match.start()]
        pos = match.end()
        stream.body.append(chunk)
        if word == "begin" and args:
            open_name, open_at = args[0], len(stream.body)
        elif word == "end" and len(args) == 2 and open_name is not None and args[0] == open_name:
            code = int(args[1]) if args[1].lstrip("-").isdigit() else -1
            stream.sections[open_name] = ("".join(stream.body[open_at:]), code)
            open_name = None
        elif word == "exit" and args and args[0].lstrip("-").isdigit():
            stream.exit_code = int(args[0])
        elif word == "kind" and args:
            stream.kind = args[0]
    if stream.started:
        stream.body.append(text[pos:])
    else:
        stream.pre = text[1:]
    return stream


def parse_script_output(stdout: str, stderr: str, nonce: str) -> ScriptOutput:
    """Cut both streams at the markers. Output before the start marker (the login shell's)
    and output outside any step's begin/end never reaches a section."""
    marker(nonce)  # validates it
    out = _read_stream(stdout, nonce)
    err = _read_stream(stderr, nonce)
    sections: dict[str, Section] = {}
    for name in list(out.sections) + [n for n in err.sections if n not in out.sections]:
        o, e = out.sections.get(name), err.sections.get(name)
        code = o[1] if o is not None else e[1] if e is not None else -1
        sections[name] = Section(name, code, o[0] if o else "", e[0] if e else "")
    return ScriptOutput(
        started=err.started or out.started,
        exit_code=err.exit_code if err.exit_code is not None else out.exit_code,
        remote_pid=err.pid if err.pid is not None else out.pid,
        kind=err.kind,
        sections=sections,
        stdout="".join(out.body),
        stderr="".join(err.body).strip("\n"),
        shell_stdout=out.pre,
        shell_stderr=err.pre,
    )
