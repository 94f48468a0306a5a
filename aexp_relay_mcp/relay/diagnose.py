"""Pure: what came back from a remote command -> the error the caller gets.

The first layer that knows both ssh's words (``ssh.failures``) and git's
(``remote.failures``): a command that never reported its exit is the transport's
failure; one that reported a non-zero exit is the remote side's, classified by a guard's
kind or by what git said.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..model.errors import (
    ConsentError,
    Failure,
    RelayDownError,
    RelayError,
    RelayTimeoutError,
    RelayValidationError,
    RemoteCommandError,
)
from ..model.text import clean_text, tail
from ..remote.failures import classify_git_failure, classify_guard_failure
from ..remote.output import ScriptOutput
from ..ssh.failures import classify_ssh_failure
from ..ssh.runner import ProcessResult


def ssh_missing(ssh_bin: str) -> RelayDownError:
    return RelayDownError(
        f"The ssh program {ssh_bin!r} was not found on this machine.",
        kind="ssh_missing",
        hint="Install the OpenSSH client, or set AEXP_RELAY_SSH_BIN to its path.",
    )


def transport_failure(
    out: ScriptOutput, proc: ProcessResult, verbose_log: Path | None
) -> RelayError:
    """The command never reported its exit: ssh failed, or it was stopped on the host."""
    # Before the start marker, all of stderr is ssh's (and maybe the login shell's);
    # after it, only what follows counts.
    stderr = (proc.stderr if not out.started else out.stderr) + log_tail(verbose_log)
    f = classify_ssh_failure(stderr)
    if not out.started or f.kind != "unreachable":
        return RelayDownError(
            f.message,
            kind=f.kind,
            hint=f.hint + verbose_hint(verbose_log),
            exit_code=proc.exit_code,
            stderr_tail=tail(stderr),
        )
    return RemoteCommandError(
        "The command was stopped on the login node before it finished "
        f"(exit code {proc.exit_code}: killed, or its time limit there ran out).",
        kind="killed",
        hint="Run {op:repo_status} to see the checkout's state, then retry.",
        exit_code=proc.exit_code,
        stderr_tail=tail(stderr),
    )


def remote_failure(
    out: ScriptOutput, proc: ProcessResult, op: str | None, verbose_log: Path | None
) -> RelayError | None:
    """None when the script reported success; else the error, transport or remote."""
    if not out.started or out.exit_code is None:
        return transport_failure(out, proc, verbose_log)
    if out.exit_code == 0:
        return None
    code = out.exit_code
    # git puts some reasons on stdout (push --porcelain, rebase's CONFLICT lines). The
    # login shell's own output (before the start marker) is never read as git's.
    said = out.stderr + "\n" + out.stdout
    if out.kind:
        guard = out.section("guard")
        failure: Failure = classify_guard_failure(out.kind, guard.stderr if guard else "")
    else:
        failure = classify_git_failure(said, code)
    details: dict[str, Any] = {}
    if op == "rebase" and out.section("abort") is not None:
        failure, details = rebase_conflict(out)
    return RemoteCommandError(
        failure.message,
        kind=failure.kind,
        hint=failure.hint,
        exit_code=code,
        stderr_tail=tail(said),
        details=details,
    )


def unparseable(out: ScriptOutput, detail: str) -> RemoteCommandError:
    return RemoteCommandError(
        f"The command finished on the login node (exit code {out.exit_code}), but its output "
        f"could not be read ({detail}), so its result is not reported.",
        kind="unparseable_output",
        hint="Run {op:repo_status} to see the checkout's state, and {op:status} to see "
        "whether the login shell prints text of its own. If it persists, report it with "
        "the request_id and stderr_tail.",
        exit_code=out.exit_code,
        stderr_tail=tail(out.shell_stdout + out.stdout + "\n" + out.stderr),
    )


def rebase_conflict(out: ScriptOutput) -> tuple[Failure, dict[str, Any]]:
    conflicts_sec = out.section("conflicts")
    files = [f for f in (conflicts_sec.stdout if conflicts_sec else "").split("\0") if f]
    old_sec = out.section("old")
    old = old_sec.stdout.strip() if old_sec else ""
    restored_sec = out.section("restored")
    restored = (restored_sec.stdout.strip() if restored_sec else "") == old and bool(old)
    if not files:
        # A stopped rebase without conflicted files (e.g. untracked files in the way).
        failure = classify_git_failure(out.stderr, out.exit_code or 1)
    else:
        failure = Failure(
            "conflict",
            "Rebasing onto upstream hit conflicts; the rebase was aborted in the same call "
            + ("and the repo is exactly as before." if restored else "BUT HEAD moved!"),
            "Resolve by hand on the login node (or ask the user how to proceed); nothing was "
            "pushed. {op:repo_status} shows the state.",
        )
    return failure, {
        "conflicted_files": [clean_text(f) for f in files],
        "restored": restored,
        "head": old or None,
    }


def outcome_of(exc: RelayError) -> str:
    """The audit outcome of a call that ended with exc."""
    if isinstance(exc, RelayValidationError):
        return "rejected"
    if isinstance(exc, ConsentError):
        return exc.kind
    if isinstance(exc, RelayTimeoutError):
        return "timeout"
    if isinstance(exc, RelayDownError):
        return "unreachable"
    return "failed"


def log_tail(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 4000))
            return "\n" + fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def verbose_hint(path: Path | None) -> str:
    return (
        f" The ssh debug log is {path}."
        if path
        else " Set AEXP_RELAY_SSH_VERBOSE=1 for an ssh debug log."
    )
