"""``status``: is the host reachable, is the repo a checkout, and what does it cost.

Besides git, wandb and the repo, it reports the login shell, because that is where
real login nodes differ from a clean account:

* whether it prints anything before our command (a banner in ~/.bashrc, a module
  notice), and its first line. The relay sets that output aside, but scp, rsync and
  sftp break on it;
* how long it takes to start: the median shell-starting call minus the median call
  that starts no shell (a subsystem request sshd refuses before any shell runs). A
  conda init in ~/.bashrc costs every call ~300 ms, and this is where a user sees it.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import statistics
from typing import Any

from ..model.errors import Failure, RelayDownError, RelayTimeoutError, RemoteCommandError
from ..model.results import ConnectionStatus
from ..model.text import clean_text
from ..remote.failures import classify_git_failure, git_version_ok, guard_failure
from ..remote.ops import build_check
from ..remote.output import ScriptOutput
from ..remote.script import marker, start_marker_command
from ..ssh.login_shell import rc_guard, shell_name, worked_around
from ..ssh.masters import SharedConnection
from ..ssh.runner import cancel_and_wait
from .call import Call
from .call_runner import CallRunner, check_timeout
from .diagnose import fill, unset_variable

CHECK_TIMEOUT_S = 30.0
ROUNDS = 3  # probes of each kind, for the login shell's cost
SLOW_LOGIN_SHELL_MS = 100.0
FIRST_LINE_CHARS = 120


async def check_connection(
    runner: CallRunner,
    ssh_host: str | None,
    remote_repo: str | None,
    *,
    timeout: float | None = None,
) -> ConnectionStatus:
    """Reachability, round trip, repo, branch, git version, wandb and the login shell;
    never raises for an unreachable host (that is a normal answer, with a hint)."""
    call = runner.new_call("status", None, ssh_host, remote_repo)
    with runner.ending(call):
        runner.target(call, repo_required=False)
        limit = min(runner.config.timeout or CHECK_TIMEOUT_S, CHECK_TIMEOUT_S)
        call.set_limit(check_timeout(timeout) if timeout is not None else limit)
        base = _nothing_known(call)
        # What status measures runs side by side: the check, and the login shell's cost
        # (its probes are sessions of their own), so the whole takes a few round trips.
        measure = asyncio.ensure_future(_login_shell_ms(runner, call))
        try:
            started = runner.clock()
            body = build_check(runner.context(call))
            out = await runner.execute(call, body, enter=False, check=False, retry=True)
            rtt = runner.clock() - started
        except (RelayDownError, RelayTimeoutError, RemoteCommandError) as exc:
            # ssh could not log in, or it did and the login shell would not run the check
            # (reachable, then: never called unreachable once a shell ran)
            await cancel_and_wait(measure)
            runner.fail(call, exc)
            return ConnectionStatus(
                **base,
                reachable=isinstance(exc, RemoteCommandError),
                rtt_ms=None,
                problem=exc.kind,
                hint=f"{exc.message} {runner.surface.render(exc.hint_template)}",
                duration_s=round(call.elapsed, 4),
            )
        except BaseException:
            await cancel_and_wait(measure)
            raise
        shell_ms = await measure
        if shell_ms is None:
            # a dropped connection took the probes with it: measure over the new one
            shell_ms = await _login_shell_ms(runner, call)
        return await _reachable(runner, call, out, base, rtt, shell_ms)


def _nothing_known(call: Call) -> dict[str, Any]:
    """The fields an unreachable host cannot fill (None: not known, not "no")."""
    return {
        "host": call.host or "",
        "repo": call.repo or None,
        "repo_resolved": None,
        "request_id": call.request_id,
        "repo_exists": None,
        "is_git_repo": None,
        "branch": None,
        "git_version": None,
        "wandb_available": None,
        "shared_connection": None,
        "shared_connection_age_s": None,
        "control_path": None,
        "login_shell": None,
        "login_shell_output": None,
        "login_shell_first_line": None,
        "login_shell_ms": None,
        "warnings": [],
    }


async def _reachable(
    runner: CallRunner,
    call: Call,
    out: ScriptOutput,
    base: dict[str, Any],
    rtt: float,
    shell_ms: float | None,
) -> ConnectionStatus:
    host, repo = call.host or "", call.repo or ""
    status = {**base, **_interpret(out, repo)}
    problem: Failure | None = status.pop("failure")
    stream, first_line = login_shell_output(out)
    shared = await runner.transport.shared_connection(host)
    status.update(
        shared_connection=shared.live if shared.enabled else None,
        shared_connection_age_s=shared.age_s,
        control_path=shared.control_path,
        login_shell=out.login_shell,
        login_shell_output=stream,
        login_shell_first_line=first_line,
        login_shell_ms=shell_ms,
        warnings=list(
            dict.fromkeys(
                [
                    *non_posix_warnings(out.login_shell),
                    *login_shell_warnings(stream, first_line, shell_ms, out.login_shell),
                    *socket_warnings(host, shared),
                    *call.warnings,
                ]
            )
        ),
        problem=problem.kind if problem else None,
        hint=f"{problem.message} {fill(runner.surface.render(problem.hint), host, repo)}"
        if problem
        else "",
    )
    call.finish("ok", status["problem"], out.exit_code)
    return ConnectionStatus(
        **status,
        reachable=True,
        rtt_ms=round(rtt * 1000, 1),
        duration_s=round(call.elapsed, 4),
    )


def _interpret(out: ScriptOutput, repo: str) -> dict[str, Any]:
    status: dict[str, Any] = {}
    problem: Failure | None = None
    git = out.section("git_version")
    if git is not None and git.exit_code == 0:
        match = re.search(r"git version (\S+)", git.stdout)
        status["git_version"] = match.group(1) if match else git.stdout.strip()
        if not git_version_ok(status["git_version"]):
            problem = guard_failure("git_too_old")
    elif git is not None:
        problem = guard_failure("git_missing")
    wandb = out.section("wandb")
    status["wandb_available"] = wandb is not None and wandb.exit_code == 0
    if repo:
        status["repo_exists"] = out.kind not in ("repo_missing", "repo_not_dir")
        inside = out.section("inside")
        status["is_git_repo"] = bool(inside and inside.exit_code == 0)
        branch = out.section("branch")
        if branch is not None and branch.exit_code == 0:
            status["branch"] = branch.stdout.strip() or None
        resolved = out.section("resolved")
        status["repo_resolved"] = resolved.stdout.strip() or None if resolved else None
        if out.kind:
            problem = guard_failure(out.kind)
            unset = out.section("unset")
            if out.kind == "path_variable_unset" and unset is not None:
                problem = Failure(problem.kind, unset_variable(unset.stdout), problem.hint)
        elif inside is not None and inside.exit_code != 0 and problem is None:
            problem = classify_git_failure(inside.stderr, inside.exit_code)
    status["failure"] = problem
    return status


def login_shell_output(out: ScriptOutput) -> tuple[str | None, str | None]:
    """Which streams the login shell printed on before our command, and its first line."""
    printed = [
        (name, text)
        for name, text in (("stdout", out.shell_stdout), ("stderr", out.shell_stderr))
        if text.strip()
    ]
    if not printed:
        return None, None
    stream = "both" if len(printed) == 2 else printed[0][0]
    line = next(row for row in printed[0][1].splitlines() if row.strip()).strip()
    if len(line) > FIRST_LINE_CHARS:
        line = line[: FIRST_LINE_CHARS - 1] + "…"
    return stream, clean_text(line)


async def _login_shell_ms(runner: CallRunner, call: Call) -> float | None:
    """Median shell-starting call minus median no-shell call, all of them at once."""
    host, transport = call.host or "", runner.transport

    async def shell() -> float | None:
        nonce = secrets.token_hex(8)
        started = runner.clock()
        run = await transport.run(host, start_marker_command(nonce), deadline=call.deadline)
        return runner.clock() - started if marker(nonce) in run.result.stderr else None

    # both kinds of probe start their clocks once the connection is up (its start-up is
    # no shell's cost); a probe never fails the status itself: one that cannot measure
    # gives None
    try:
        await transport.ready(host, call.deadline)
    except Exception:
        return None
    probes = [transport.no_shell_round_trip(host, call.deadline) for _ in range(ROUNDS)]
    probes += [shell() for _ in range(ROUNDS)]
    times = await asyncio.gather(*probes, return_exceptions=True)
    bare = [t for t in times[:ROUNDS] if isinstance(t, float)]
    shells = [t for t in times[ROUNDS:] if isinstance(t, float)]
    if not bare or not shells:
        return None
    return round(max(0.0, statistics.median(shells) - statistics.median(bare)) * 1000, 1)


def socket_warnings(host: str, shared: SharedConnection) -> list[str]:
    """The user's ControlPath: passed over (another account's socket), or in a directory
    other users can write to, where nothing has happened yet."""
    if shared.passed_over is not None:
        return [shared.passed_over.warning(host, shared.control_path)]
    if shared.shared_directory is not None:
        return [
            f"Your ssh ControlPath for {host} is in {shared.shared_directory}, which other "
            "users can write to: another account could put a socket there first, and read "
            "what is sent through it. The relay checks who owns a socket before it uses one "
            "(and never hands such a path to a spawned ssh); plain ssh does not check. In "
            f"~/.ssh/config, give {host} `ControlPath ~/.ssh/cm-%C` (a directory only you "
            "can write)."
        ]
    return []


def non_posix_warnings(shell: str | None) -> list[str]:
    """A login shell the relay works around (csh, tcsh, fish): what still differs."""
    if not worked_around(shell):
        return []
    name = shell_name(shell)
    rc, _ = rc_guard(shell)
    export = "setenv NAME value" if name in ("csh", "tcsh") else "set -gx NAME value"
    return [
        f"Your login shell is {name}, which reads commands unlike POSIX sh. Every tool works: "
        "the relay hands each command to /bin/sh in one line that any shell reads the same "
        "way. One thing differs: a path with $VARIABLES ($SCRATCH/exp) sees only "
        f"environment variables, so set them in {rc} with `{export}`, not as shell "
        "variables."
    ]


def login_shell_warnings(
    stream: str | None,
    first_line: str | None,
    shell_ms: float | None,
    shell: str | None = None,
) -> list[str]:
    rc, guard = rc_guard(shell)
    warnings = []
    if stream in ("stdout", "both"):
        warnings.append(
            f"Your login shell prints on stdout before every command (first line: "
            f"{first_line!r}). The relay sets it aside, but scp, rsync and sftp break on it. "
            f"Make it print only in interactive shells: in {rc} put `{guard}` after what "
            "non-interactive sessions need (module load git, PATH), and move the banner "
            "below it."
        )
    elif stream == "stderr":
        warnings.append(
            f"Your login shell prints on stderr before every command (first line: "
            f"{first_line!r}). Harmless for the relay, but it fills error tails; the guard "
            f"`{guard}` in {rc}, above the output, removes it."
        )
    if shell_ms is not None and shell_ms >= SLOW_LOGIN_SHELL_MS:
        warnings.append(
            f"Your login shell takes about {shell_ms:.0f} ms to start, and every call pays it "
            "(measured against a call that starts no shell). Usually conda, pyenv or module "
            f"initialisation in {rc}: move it below `{guard}`, so only interactive shells "
            "run it."
        )
    return warnings
