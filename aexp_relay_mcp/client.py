"""RelayClient: validate -> build -> run -> parse -> audit.

The MCP server and the CLI are thin adapters over this class. A ``Call`` (call.py) owns
each request's life; the ``Transport`` (transport.py) gets its commands to the host.
The wandb consent flow lives in ``wandb_sync.py``, the connection check in
``status_check.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import anyio

from .audit import AuditLog
from .call import Call, LiveCalls
from .config import REMOTE_TIMEOUT_GRACE, RelayConfig, normalize_repo
from .connection import ConnectionManager
from .errors import (
    LIBRARY,
    ConsentError,
    RelayDownError,
    RelayError,
    RelayTimeoutError,
    RelayValidationError,
    RemoteCommandError,
    Surface,
)
from .ops import BuildContext, OpSpec, validate_request, wandb_words
from .parsing import (
    Failure,
    GitProgress,
    UnparseableOutput,
    classify_git_failure,
    classify_guard_failure,
    classify_ssh_failure,
    clean_text,
    tail,
)
from .remote import (
    Script,
    ScriptOutput,
    build_remote_command,
    parse_script_output,
    validate_host,
    validate_repo,
)
from .results import ConnectionStatus, OpResult, WandbPreview
from .runner import ProcessResult, ProcessTimeout, Runner, run_process
from .transport import Transport

ProgressFn = Callable[[float, str], None]

MAX_TIMEOUT_S = 24 * 3600.0


class RelayClient:
    """Runs whitelisted ops on ``ssh_host`` in ``remote_repo``.

    ``runner`` and ``clock`` are injected so pure tests can substitute them;
    everything else uses the real ssh. ``surface`` says how hints name ops.
    """

    def __init__(
        self,
        ssh_host: str | None = None,
        remote_repo: str | None = None,
        *,
        timeout: float | None = None,
        config: RelayConfig | None = None,
        runner: Runner = run_process,
        audit: AuditLog | None = None,
        surface: Surface = LIBRARY,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        base = config if config is not None else RelayConfig.from_env()
        self.config = base.replace(
            ssh_host=ssh_host or base.ssh_host,
            remote_repo=remote_repo or base.remote_repo,
            timeout=timeout if timeout is not None else base.timeout,
        )
        self.audit = audit if audit is not None else AuditLog(self.config.audit_log)
        self.surface = surface
        self.clock = clock
        self.connections = ConnectionManager(self.config, clock)
        self.transport = Transport(
            self.config, self.connections, runner=runner, env=env, clock=clock
        )
        self.calls = LiveCalls()
        # Set by the server: True once its client has gone (stdin closed), so a call the
        # SDK cancels then is audited as interrupted, not as cancelled by the client.
        self.shutting_down: Callable[[], bool] = lambda: False
        self._repo_locks: dict[tuple[str, str], asyncio.Lock] = {}

    # ------------------------------------------------------------------ public

    async def request(
        self,
        op: str,
        args: Mapping[str, Any] | None = None,
        *,
        ssh_host: str | None = None,
        remote_repo: str | None = None,
        approve: bool = False,
        timeout: float | None = None,
        on_progress: ProgressFn | None = None,
    ) -> OpResult:
        """Run one op. Returns its frozen result or raises a RelayError.

        ``on_progress(percent, message)`` is called as git reports progress.
        """
        call = self.new_call(op, args, ssh_host, remote_repo, approved=approve)
        with self.ending(call):
            spec, parsed = validate_request(op, args)
            self.target(call)
            if not isinstance(approve, bool):
                raise RelayValidationError(
                    "approve must be true or false.",
                    hint="Pass {set:approve} only after the user agreed.",
                )
            call.set_limit(self._timeout(spec, timeout))
            ctx = self.build_context(call)
            if spec.consent:
                from .wandb_sync import wandb_sync

                result: OpResult = await wandb_sync(
                    self, call, spec, parsed, ctx, approve, on_progress
                )
            else:
                async with _maybe(self.repo_lock(call), spec.mutating):
                    out = await self.execute(
                        call, spec.build(parsed, ctx), spec=spec, on_progress=on_progress
                    )
                result = self.result(call, spec, out, parsed)
        return result

    async def check_connection(
        self,
        ssh_host: str | None = None,
        remote_repo: str | None = None,
        *,
        timeout: float | None = None,
    ) -> ConnectionStatus:
        """Reachability, round trip, repo, branch, git version, wandb and the login shell;
        never raises for an unreachable host (that is a normal answer, with a hint)."""
        from .status_check import check_connection

        return await check_connection(self, ssh_host, remote_repo, timeout=timeout)

    async def wandb_preview(
        self,
        runs: list[str] | None = None,
        *,
        ssh_host: str | None = None,
        remote_repo: str | None = None,
    ) -> WandbPreview:
        """What ``wandb_sync`` would upload: runs, sizes and the exact command. Uploads nothing."""
        from .wandb_sync import wandb_preview

        return await wandb_preview(self, runs, ssh_host=ssh_host, remote_repo=remote_repo)

    def record_refusal(
        self,
        op: str,
        args: Mapping[str, Any] | None,
        error: RelayError,
        *,
        ssh_host: str | None = None,
        remote_repo: str | None = None,
    ) -> None:
        """One audit line for a call an adapter refused before it reached ssh."""
        self.fail(self.new_call(op, args, ssh_host, remote_repo), error)

    # ------------------------------------------------------------------ the pieces

    def new_call(
        self,
        op: str,
        args: Mapping[str, Any] | None,
        ssh_host: str | None,
        remote_repo: str | None,
        *,
        approved: bool = False,
    ) -> Call:
        return Call(
            op=op,
            args=args,
            host=ssh_host or self.config.ssh_host,
            repo=remote_repo or self.config.remote_repo,
            approved=approved,
            audit=self.audit,
            transport=self.transport,
            live=self.calls,
            surface=self.surface.name,
            clock=self.clock,
        )

    @contextlib.contextmanager
    def ending(self, call: Call) -> Iterator[None]:
        """End call with how the block ended: ok, its RelayError's outcome, or cancelled.
        A block may end the call itself first (finish is once only)."""
        try:
            yield
        except RelayError as exc:
            self.fail(call, exc)
            raise
        except asyncio.CancelledError:
            outcome = call.cancelled_as or self._cancel_outcome()
            call.finish(outcome, outcome)
            raise
        call.finish("ok", None, 0)

    def _cancel_outcome(self) -> str:
        """A cancel while the client is gone is the shutdown's, else the client's own."""
        return "interrupted" if self.shutting_down() else "cancelled"

    def fail(self, call: Call, exc: RelayError) -> None:
        exc.request_id = exc.request_id or call.request_id
        exc.op = exc.op or call.op
        if isinstance(exc, RelayTimeoutError):
            exc.details.setdefault("timeout_s", round(call.deadline - call.started, 3))
        call.finish(outcome_of(exc), exc.kind, exc.exit_code)

    def target(self, call: Call, *, repo_required: bool = True) -> None:
        """Validate the call's host and repo; confine them to the allowlists when set."""
        host = validate_host(call.host)
        repo = validate_repo(call.repo) if (call.repo or repo_required) else ""
        allowed_hosts, allowed_repos = self.config.allowed_hosts, self.config.allowed_repos
        if allowed_hosts and host not in allowed_hosts:
            raise RelayValidationError(
                f"ssh host {host!r} is not in AEXP_RELAY_ALLOWED_HOSTS.",
                hint=f"Allowed hosts: {', '.join(allowed_hosts)}. "
                "Omit {arg:ssh_host} to use the default.",
            )
        if allowed_repos and repo and normalize_repo(repo) not in allowed_repos:
            raise RelayValidationError(
                f"remote repo {repo!r} is not in AEXP_RELAY_ALLOWED_REPOS.",
                hint=f"Allowed repos: {', '.join(allowed_repos)}. "
                "Omit {arg:remote_repo} to use the default.",
            )
        call.host, call.repo = host, repo

    def build_context(self, call: Call) -> BuildContext:
        return BuildContext(
            repo=call.repo or "",
            wandb_words=wandb_words(self.config.wandb),
            wandb_dir=self.config.wandb_dir,
        )

    def repo_lock(self, call: Call) -> asyncio.Lock:
        """Mutating ops on one checkout run one at a time (in this process)."""
        return self._repo_locks.setdefault((call.host or "", call.repo or ""), asyncio.Lock())

    def _timeout(self, spec: OpSpec, timeout: float | None) -> float:
        limit = timeout if timeout is not None else (self.config.timeout or spec.default_timeout)
        return check_timeout(limit)

    def result(
        self, call: Call, spec: OpSpec, out: ScriptOutput, parsed: Any, **extra: Any
    ) -> OpResult:
        """The op's frozen result; unreadable output is an error, never a guess."""
        try:
            fields = spec.parse(out, parsed)
        except UnparseableOutput as exc:
            raise unparseable(out, str(exc)) from None
        return spec.result_model(
            op=spec.name,
            request_id=call.request_id,
            host=call.host or "",
            repo=call.repo or "",
            duration_s=round(call.elapsed, 4),
            **fields,
            **extra,
        )

    async def execute(
        self,
        call: Call,
        body: Script,
        *,
        spec: OpSpec | None = None,
        enter: bool = True,
        check: bool = True,
        on_progress: ProgressFn | None = None,
    ) -> ScriptOutput:
        """Run a script body over ssh for call; turn transport and remote failures into errors."""
        nonce = secrets.token_hex(8)
        left = max(0.1, call.deadline - self.clock())
        command = build_remote_command(
            body, call.repo or "~", nonce, timeout=left, grace=REMOTE_TIMEOUT_GRACE, enter=enter
        )
        verbose_log = self._verbose_log_path(nonce)
        progress = GitProgress(on_progress) if on_progress else None
        try:
            run = await call.run(
                command,
                nonce,
                on_stderr=progress.feed if progress else None,
                verbose_log=verbose_log,
            )
        except FileNotFoundError:
            raise self._ssh_missing() from None
        except ProcessTimeout as exc:
            raise await self._timed_out(call, exc, nonce, verbose_log) from None
        except asyncio.CancelledError:
            # Judged now: by the time the remote group is gone the client may have left.
            call.cancelled_as = call.cancelled_as or self._cancel_outcome()
            with anyio.CancelScope(shield=True):
                await call.stop_remote()
            raise
        out = parse_script_output(run.result.stdout, run.result.stderr, nonce)
        if out.exit_code is not None:
            call.command_ended()
        elif call.remote is not None:
            # It started but never reported back (the connection dropped): end it on the
            # login node through a new session.
            with anyio.CancelScope(shield=True):
                await call.stop_remote()
        if check:
            self._raise_for(out, run.result, spec, verbose_log)
        elif not out.started or out.exit_code is None:
            self._raise_transport(out, run.result, verbose_log)
        return out

    async def _timed_out(
        self, call: Call, exc: ProcessTimeout, nonce: str, verbose_log: Path | None
    ) -> RelayTimeoutError:
        started_remotely = call.remote is not None
        gone = await call.stop_remote()
        partial = parse_script_output(exc.result.stdout, exc.result.stderr, nonce)
        if not started_remotely:
            where = (
                "ssh had not got the command running yet (stuck connecting, in a "
                "ProxyCommand/ProxyJump, or authenticating)."
            )
        elif gone:
            where = "The command had started on the login node and was stopped there too."
        else:
            where = (
                "The command had started on the login node; stopping it there could not be "
                "confirmed, and its own time limit there ends it "
                f"{REMOTE_TIMEOUT_GRACE:g} s after this timeout."
            )
        limit = call.deadline - call.started
        return RelayTimeoutError(
            f"The call did not finish within {limit:g}s on {call.host}. {where}",
            hint="Retry with a larger {arg:timeout} if the op is slow (big fetch, slow "
            "filesystem); run {op:status} to check the connection." + _verbose_hint(verbose_log),
            stderr_tail=tail(partial.stderr + _log_tail(verbose_log)),
        )  # fail() adds timeout_s, as for every timeout

    def _ssh_missing(self) -> RelayDownError:
        return RelayDownError(
            f"The ssh program {self.config.ssh_bin!r} was not found on this machine.",
            kind="ssh_missing",
            hint="Install the OpenSSH client, or set AEXP_RELAY_SSH_BIN to its path.",
        )

    def _raise_transport(
        self, out: ScriptOutput, proc: ProcessResult, verbose_log: Path | None
    ) -> NoReturn:
        # Before the start marker, all of stderr is ssh's (and maybe the login shell's);
        # after it, only what follows counts.
        stderr = (proc.stderr if not out.started else out.stderr) + _log_tail(verbose_log)
        f = classify_ssh_failure(stderr)
        if not out.started or f.kind != "unreachable":
            raise RelayDownError(
                f.message,
                kind=f.kind,
                hint=f.hint + _verbose_hint(verbose_log),
                exit_code=proc.exit_code,
                stderr_tail=tail(stderr),
            )
        raise RemoteCommandError(
            "The command was stopped on the login node before it finished "
            f"(exit code {proc.exit_code}: killed, or its time limit there ran out).",
            kind="killed",
            hint="Run {op:repo_status} to see the checkout's state, then retry.",
            exit_code=proc.exit_code,
            stderr_tail=tail(stderr),
        )

    def _raise_for(
        self,
        out: ScriptOutput,
        proc: ProcessResult,
        spec: OpSpec | None,
        verbose_log: Path | None,
    ) -> None:
        if not out.started or out.exit_code is None:
            self._raise_transport(out, proc, verbose_log)
        if out.exit_code == 0:
            return
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
        if spec is not None and spec.name == "rebase" and out.section("abort") is not None:
            failure, details = _rebase_conflict(out)
        raise RemoteCommandError(
            failure.message,
            kind=failure.kind,
            hint=failure.hint,
            exit_code=code,
            stderr_tail=tail(said),
            details=details,
        )

    def _verbose_log_path(self, nonce: str) -> Path | None:
        if not self.config.ssh_verbose:
            return None
        directory = self.config.verbose_log_dir
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return directory / f"ssh-{time.strftime('%Y%m%d-%H%M%S')}-{nonce}.log"


def check_timeout(limit: object) -> float:
    if isinstance(limit, bool) or not isinstance(limit, (int, float)):
        raise RelayValidationError(
            f"timeout must be a number of seconds, not {type(limit).__name__}.",
            hint=f"Pass {{arg:timeout}} as a number between 1 and {MAX_TIMEOUT_S:g}.",
        )
    if not 0 < limit <= MAX_TIMEOUT_S or limit != limit:
        raise RelayValidationError(
            f"timeout {limit!r} is out of range.",
            hint=f"Pass {{arg:timeout}} greater than 0 and at most {MAX_TIMEOUT_S:g} seconds.",
        )
    return float(limit)


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


def _rebase_conflict(out: ScriptOutput) -> tuple[Failure, dict[str, Any]]:
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
    if isinstance(exc, RelayValidationError):
        return "rejected"
    if isinstance(exc, ConsentError):
        return exc.kind
    if isinstance(exc, RelayTimeoutError):
        return "timeout"
    if isinstance(exc, RelayDownError):
        return "unreachable"
    return "failed"


def _log_tail(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 4000))
            return "\n" + fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _verbose_hint(path: Path | None) -> str:
    return (
        f" The ssh debug log is {path}."
        if path
        else " Set AEXP_RELAY_SSH_VERBOSE=1 for an ssh debug log."
    )


class _maybe:
    """``async with _maybe(lock, cond)``: hold the lock only when cond is true."""

    def __init__(self, lock: asyncio.Lock, hold: bool) -> None:
        self.lock, self.hold = lock, hold

    async def __aenter__(self) -> None:
        if self.hold:
            await self.lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        if self.hold:
            self.lock.release()


__all__ = ["RelayClient"]
