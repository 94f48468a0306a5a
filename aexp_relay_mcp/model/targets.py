"""Where a call goes: the ssh host, the repo path and the wandb directory, validated.

Pure checks on strings, shared by the configuration (environment variables) and the
calls (arguments): anything ssh could read as an option, or a shell as syntax, is
refused here with a message that says what to pass instead.
"""

from __future__ import annotations

import re
import unicodedata

from .errors import RelayValidationError

MAX_HOST_LEN = 255
MAX_REPO_LEN = 4096

# An ssh destination: alias, host, user@host, [v6]:port-less forms. No option
# look-alikes, no whitespace, no shell characters.
_HOST_RE = re.compile(
    r"[A-Za-z0-9_.@%][A-Za-z0-9_.@%-]*"  # alias, host, user@host
    r"|([A-Za-z0-9_.-]+@)?[0-9A-Fa-f:]*:[0-9A-Fa-f:]*"  # an IPv6 literal, e.g. ::1
)


# A variable the login shell expands in a path, as cluster docs write them: $SCRATCH,
# ${WORK}, /scratch/$USER. Any other $ ($(...), ${X:-y}, $1, $$) and backticks stay
# literal characters of the path, as every other character does.
_VARIABLE = re.compile(r"\$(?:([A-Za-z_][A-Za-z0-9_]*)|\{([A-Za-z_][A-Za-z0-9_]*)\})")
PATH_RULE = (
    "absolute (/...), ~ or ~/..., or starting with a variable the login shell sets ($SCRATCH/... "
    "or ${WORK}/...); $NAME and ${NAME} are expanded there, everything else is literal"
)


def path_parts(path: str) -> list[tuple[str, str]]:
    """A path as ``("home", "~/")``, ``("text", literal)`` and ``("var", NAME)`` parts."""
    parts: list[tuple[str, str]] = []
    rest = path
    if path == "~":
        return [("home", "~")]
    if path.startswith("~/"):
        parts.append(("home", "~/"))
        rest = path[2:]
    pos = 0
    for match in _VARIABLE.finditer(rest):
        if match.start() > pos:
            parts.append(("text", rest[pos : match.start()]))
        parts.append(("var", match.group(1) or match.group(2)))
        pos = match.end()
    if pos < len(rest):
        parts.append(("text", rest[pos:]))
    return parts


def path_variables(path: str) -> list[str]:
    """The variables a (valid) path refers to, in order, each once."""
    return list(dict.fromkeys(text for kind, text in path_parts(path) if kind == "var"))


def _path_problem(path: str) -> str:
    """Why path cannot be a path on the login node, or "" when it can."""
    if path.startswith("~") and path_parts(path)[0][0] != "home":
        return "~user/ paths are not accepted"
    return ""


def has_control(text: str) -> bool:
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
            hint="Pass {arg:remote_repo} (absolute, ~/..., or $SCRATCH/...) or set "
            "AEXP_RELAY_REMOTE_REPO.",
        )
    if len(path) > MAX_REPO_LEN:
        raise RelayValidationError(
            f"remote repo path is {len(path)} characters long; the limit is {MAX_REPO_LEN}.",
            hint="Pass {arg:remote_repo} as the real path of the checkout on the login node.",
        )
    if has_control(path):
        raise RelayValidationError(
            f"remote repo path {path!r} contains control characters (newline, NUL, escape, ...).",
            hint="Pass {arg:remote_repo} as the plain path of the checkout on the login node.",
        )
    problem = _path_problem(path)
    if not problem and not path.startswith(("/", "~")) and path_parts(path)[0][0] != "var":
        problem = "it is relative"
    if problem:
        raise RelayValidationError(
            f"remote repo path {path!r} is refused: {problem}.",
            hint="Pass {arg:remote_repo} " + PATH_RULE + ", e.g. /home/me/project, "
            "~/project, $SCRATCH/project or /scratch/$USER/project.",
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
    elif has_control(value):
        problem = "contains control characters"
    elif value.startswith("-"):
        problem = "starts with '-', so wandb would read it as an option"
    elif _path_problem(value):
        problem = f"is refused: {_path_problem(value)}"
    if problem:
        raise RelayValidationError(
            f"AEXP_RELAY_WANDB_DIR={path!r} {problem}.",
            hint="Set it to a directory relative to the repo (default wandb), an absolute "
            "path, ~/..., or one with a variable the login shell sets, e.g. $SCRATCH/wandb.",
        )
    return value.rstrip("/") or "/"


def normalize_repo(path: str) -> str:
    return path.rstrip("/") or "/"
