"""Pure: the remote command string, quoting, the status markers, and the ssh argv.

Every value that came from outside reaches the remote shell through ``quote()``,
the one quoting function in the package. Everything else in a remote command is
a literal written in this module or in ``ops.py``.

Shape of the command the login node runs (its login shell, then ``sh``)::

    printf '<marker> pid <$$>' >&2
    exec timeout -k GRACE LIMIT sh -c '<script>'      # when coreutils timeout exists

and ``<script>`` is::

    <helpers: m (mark), s (step), f (fail with kind)>
    export GIT_TERMINAL_PROMPT=0 GIT_SSH_COMMAND='ssh -o BatchMode=yes' LC_ALL=C ...
    [ -e REPO ] || f repo_missing; [ -d REPO ] || f repo_not_dir; cd -- REPO || f ...
    <op body: steps>
    m exit $?

Each step's stdout and stderr end with a marker line carrying the step's name and
exit status, so the output can be cut into sections. The final ``exit`` marker
on stderr is the remote command's own exit status: when it is missing, the
command never finished (ssh failed, or the command was killed).
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import RelayValidationError

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
            hint="Pass ssh_host (an ssh alias or user@host) or set AEXP_RELAY_SSH_HOST.",
        )
    if len(host) > MAX_HOST_LEN:
        raise RelayValidationError(
            f"ssh host is {len(host)} characters long; the limit is {MAX_HOST_LEN}.",
            hint="Use an ssh alias from ~/.ssh/config.",
        )
    if host.startswith("-"):
        raise RelayValidationError(
            f"ssh host {host!r} starts with '-', so ssh would read it as an option.",
            hint="Pass a host name or an alias from ~/.ssh/config; options belong in that file.",
        )
    if not _HOST_RE.fullmatch(host):
        raise RelayValidationError(
            f"ssh host {host!r} contains characters that are not allowed "
            "(whitespace, control or shell characters).",
            hint="Use letters, digits and . _ - @ % only (or an IPv6 address), "
            "e.g. an alias or user@login.hpc.example.",
        )
    return host


def validate_repo(path: str | None) -> str:
    if path is None or not path.strip():
        raise RelayValidationError(
            "No remote repo path given.",
            hint="Pass remote_repo (absolute, or starting with ~/) or set AEXP_RELAY_REMOTE_REPO.",
        )
    if len(path) > MAX_REPO_LEN:
        raise RelayValidationError(
            f"remote repo path is {len(path)} characters long; the limit is {MAX_REPO_LEN}.",
            hint="Pass the real path of the checkout on the login node.",
        )
    if _has_control(path):
        raise RelayValidationError(
            f"remote repo path {path!r} contains control characters (newline, NUL, escape, ...).",
            hint="Pass the plain path of the checkout on the login node.",
        )
    if not (path.startswith("/") or path == "~" or path.startswith("~/")):
        raise RelayValidationError(
            f"remote repo path {path!r} must be absolute or start with ~/.",
            hint="Pass e.g. /home/me/project or ~/project. ~user/ paths are not accepted.",
        )
    return path


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
    """Run argv silently; if it fails, stop the script with failure ``kind``."""
    if not _STEP_NAME_RE.match(kind):
        raise ValueError(f"bad kind {kind!r}")
    return f"{{ {render_words(argv)}; }} >/dev/null 2>&1 </dev/null || f {kind}"


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


def build_script(body: Script, repo: str, nonce: str, *, enter: bool = True) -> str:
    mark = marker(nonce)
    env = " ".join(f"{k}={quote(v)}" for k, v in REMOTE_ENV.items())
    helpers = (
        f"N={quote(mark)}; "
        'm() { printf "\\n%s %s %s\\n" "$N" "$1" "$2"; '
        'printf "\\n%s %s %s\\n" "$N" "$1" "$2" >&2; }; '
        's() { _n=$1; shift; "$@" </dev/null; _r=$?; m "$_n" "$_r"; return $_r; }; '
        'f() { printf "\\n%s kind %s\\n" "$N" "$1" >&2; '
        f"m exit {GUARD_EXIT}; exit {GUARD_EXIT}; }}; "
    )
    prologue = f"{enter_repo(repo)}; " if enter else ""
    return f"{helpers}export {env}; {prologue}{body.text}\n_e=$?; m exit $_e; exit $_e"


def enter_repo(repo: str) -> str:
    """cd into the repo, failing with a precise kind when it is missing or not a directory."""
    r = quote_repo(repo)
    return (
        f"[ -e {r} ] || f repo_missing; [ -d {r} ] || f repo_not_dir; "
        f"cd -- {r} 2>/dev/null || f repo_inaccessible"
    )


def build_remote_command(
    body: Script, repo: str, nonce: str, *, timeout: float, grace: float, enter: bool = True
) -> str:
    """The string handed to ssh: bounded on the login node by coreutils ``timeout``.

    ``timeout`` makes itself a process-group leader whose id is the ``$$`` reported
    first, so a later kill of that group ends everything the op started.
    """
    script = quote(build_script(body, repo, nonce, enter=enter))
    mark = quote(marker(nonce))
    limit = max(1, int(timeout + grace + 0.999))
    kill_after = max(1, int(grace + 0.999))
    return (
        f'printf "\\n%s pid %s\\n" {mark} "$$" >&2; '
        f"if command -v timeout >/dev/null 2>&1; "
        f"then exec timeout -k {kill_after} {limit} sh -c {script} aexp; "
        f"else exec sh -c {script} aexp; fi"
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
    """Remote output cut at the markers, with the markers removed."""

    exit_code: int | None  # None: the remote command never reported (ssh failed or killed)
    remote_pid: int | None
    kind: str | None  # from a failed guard
    sections: dict[str, Section] = field(default_factory=dict)
    stdout: str = ""  # markers stripped
    stderr: str = ""  # markers stripped

    def section(self, name: str) -> Section | None:
        return self.sections.get(name)


def _cut(text: str, mark: str) -> tuple[list[tuple[str, str, str]], str]:
    """Split text into (content, name, value) at marker lines; return leftovers joined.

    A marker line always starts with a newline of its own; one is added in front
    of ``text`` so a marker on the very first line matches too, then dropped.
    """
    pattern = re.compile("\n" + re.escape(mark) + r" ([a-z_]+) (\S*)\n")
    text = "\n" + text
    parts: list[tuple[str, str, str]] = []
    pos = 1
    clean: list[str] = []
    for match in pattern.finditer(text):
        content = text[pos : match.start()]
        parts.append((content, match.group(1), match.group(2)))
        clean.append(content)
        pos = match.end()
    clean.append(text[pos:])
    return parts, "".join(clean)


def parse_script_output(stdout: str, stderr: str, nonce: str) -> ScriptOutput:
    mark = marker(nonce)
    out_parts, out_clean = _cut(stdout, mark)
    err_parts, err_clean = _cut(stderr, mark)
    exit_code: int | None = None
    remote_pid: int | None = None
    kind: str | None = None
    err_by_step: dict[str, str] = {}
    pending_err: list[str] = []
    for content, name, value in err_parts:
        pending_err.append(content)
        if name == "pid" and value.isdigit():
            remote_pid = int(value)
            pending_err = []
        elif name == "kind":
            kind = value
        elif name == "exit" and value.lstrip("-").isdigit():
            exit_code = int(value)
        else:
            err_by_step[name] = "".join(pending_err)
            pending_err = []
    sections: dict[str, Section] = {}
    for content, name, value in out_parts:
        if name == "exit":
            continue
        code = int(value) if value.lstrip("-").isdigit() else -1
        sections[name] = Section(name, code, content, err_by_step.get(name, ""))
    return ScriptOutput(
        exit_code=exit_code,
        remote_pid=remote_pid,
        kind=kind,
        sections=sections,
        stdout=out_clean,
        stderr=err_clean.strip("\n"),
    )
