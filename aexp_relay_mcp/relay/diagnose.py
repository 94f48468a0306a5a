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
from ..remote.counting import counted
from ..remote.failures import classify_git_failure, classify_guard_failure, proxy_failure
from ..remote.output import ScriptOutput
from ..remote.parsing import unquote_path
from ..remote.quoting import quote_path
from ..remote.rollback import UndoReport, parse_report, restore_commands
from ..ssh.failures import classify_ssh_failure
from ..ssh.login_shell import login_shell_failure
from ..ssh.runner import ProcessResult

# Steps whose output is the relay's own bookkeeping, not what went wrong.
OWN_STEPS = ("old", "target", "undo", "conflicts", "unset")


def fill(hint: str, host: str, repo: str) -> str:
    """A hint that names the call's own host and repo (quoted for a shell), not a
    placeholder."""
    return hint.replace("{host}", host or "the login node").replace(
        "{repo}", quote_path(repo) if repo else "<repo>"
    )


def ssh_missing(ssh_bin: str) -> RelayDownError:
    return RelayDownError(
        f"The ssh program {ssh_bin!r} was not found on this machine.",
        kind="ssh_missing",
        hint="Install the OpenSSH client, or set AEXP_RELAY_SSH_BIN to its path.",
    )


def dropped_needs_a_human(first: RelayError, login: RelayDownError, host: str) -> RelayDownError:
    """A read-only call's connection dropped, and a new login to run it again needs a
    person (a password, MFA): it was not run again."""
    return RelayDownError(
        f"{first.message} Logging in to {host} again needs you ({login.kind}: a password, "
        "MFA or Duo), so the relay did not run it again. Nothing changed: the call only "
        "reads.",
        kind="connection_dropped",
        hint=f"Run `aexp-relay-mcp connect {host}` in a terminal (it asks for what the login "
        "needs), then call {op:" + (first.op or "status") + "} again.",
        exit_code=first.exit_code,
        stderr_tail=first.stderr_tail,
        details={"needs": login.kind},
    )


def shell_ran(proc: ProcessResult) -> bool:
    """Whether the remote side reported an exit status of its own: ssh had logged in and
    the login shell ran (ssh itself fails with 255; a session on a shared connection that
    ends without a status has none)."""
    return proc.exit_code is not None and 0 <= proc.exit_code != 255


def transport_failure(
    out: ScriptOutput,
    proc: ProcessResult,
    verbose_log: Path | None,
    host: str = "",
    login_shell: str | None = None,
) -> RelayError:
    """The command never reported its exit: ssh failed, the login shell did not run it,
    or it was stopped on the host. ``login_shell``: the account's, when known."""
    if not out.started and shell_ran(proc):
        # Logged in, and a shell ran and ended: never "unreachable".
        printed = out.shell_stderr + out.shell_stdout
        f = login_shell_failure(login_shell, proc.exit_code, printed)
        return RemoteCommandError(
            f.message,
            kind=f.kind,
            hint=fill(f.hint, host, ""),
            exit_code=proc.exit_code,
            stderr_tail=tail(printed),
        )
    # Before the start marker, all of stderr is ssh's (and maybe the login shell's);
    # after it, only what follows counts.
    stderr = (proc.stderr if not out.started else out.stderr) + log_tail(verbose_log)
    f = classify_ssh_failure(stderr)
    if not out.started or f.kind != "unreachable":
        return RelayDownError(
            f.message,
            kind=f.kind,
            hint=fill(f.hint, host, "") + verbose_hint(verbose_log),
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
    out: ScriptOutput,
    proc: ProcessResult,
    op: str | None,
    verbose_log: Path | None,
    host: str = "",
    repo: str = "",
    login_shell: str | None = None,
) -> RelayError | None:
    """None when the script reported success; else the error, transport or remote."""
    if not out.started or out.exit_code is None:
        return transport_failure(out, proc, verbose_log, host, login_shell)
    if out.exit_code == 0:
        return None
    return script_failure(out, op, host, repo)


def script_failure(out: ScriptOutput, op: str | None, host: str, repo: str) -> RemoteCommandError:
    """The script ran and reported a non-zero exit: what went wrong, in git's words or a
    guard's kind, and what became of the checkout."""
    code = out.exit_code if out.exit_code is not None else -1
    # git puts some reasons on stdout (push --porcelain, rebase's CONFLICT lines). The
    # login shell's own output (before the start marker) is never read as git's, nor are
    # the relay's own steps (HEAD before, the undo's report).
    stdout = out.stdout
    for own in OWN_STEPS:
        section = out.section(own)
        if section is not None and section.stdout:
            stdout = stdout.replace(section.stdout, "", 1)
    said = out.stderr + "\n" + stdout
    if out.kind:
        guard = out.section("guard")
        failure: Failure = classify_guard_failure(out.kind, guard.stderr if guard else "")
    else:
        failure = classify_git_failure(said, code)
    proxy = out.section("proxy")
    if failure.kind == "origin_unreachable" and proxy is not None:
        failure = proxy_failure(proxy.stdout) or failure
    details: dict[str, Any] = {}
    conflicts = out.section("conflicts")
    if op == "rebase" and conflicts is not None:
        found = counted(conflicts, 1)  # counted on the login node: exact, however many
        files = [clean_text(unquote_path(f)) for f in found.records]
        details["conflicted_files"] = files
        details["conflicted_count"] = found.totals[0]
        if found.totals[0]:
            failure = Failure(
                "conflict",
                "Rebasing onto upstream hit conflicts, and the rebase was aborted in the same "
                "call.",
                "Resolve by hand on {host} (or ask the user how to proceed); nothing was "
                "pushed. {op:repo_status} shows the state.",
            )
    message = failure.message
    unset = out.section("unset")
    if failure.kind == "path_variable_unset" and unset is not None:
        message = unset_variable(unset.stdout)
    undo = out.section("undo")
    report = parse_report(undo.stdout) if undo is not None else None
    if report is not None:
        message = f"{message} {undo_sentence(report, host, repo)}"
        details.update(undo_details(report, repo))
    return RemoteCommandError(
        message,
        kind=failure.kind,
        hint=fill(failure.hint, host, repo),
        exit_code=code,
        stderr_tail=tail(said),
        details=details,
    )


def unset_variable(name: str) -> str:
    return (
        f"The path uses ${clean_text(name.strip())}, which is not set (or empty) in "
        "non-interactive shells on the login node, so it cannot be resolved there."
    )


def undo_sentence(report: UndoReport, host: str, repo: str) -> str:
    """What the checkout is now, in words: as before, as after, or what restores it."""
    sentence = f"After it, {report.words}."
    if report.state in ("undo_failed", "unknown"):
        commands = "; ".join(c for c in restore_commands(report, repo) if not c.startswith("#"))
        sentence += f" To restore it on {host or 'the login node'}: {commands}"
    return sentence


def undo_details(report: UndoReport, repo: str) -> dict[str, Any]:
    details: dict[str, Any] = {"checkout": report.state, "head": report.head}
    if report.op == "rebase":
        details["restored"] = report.state == "as_before"
    if report.state in ("undo_failed", "unknown"):
        details["restore_commands"] = restore_commands(report, repo)
    return details


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
