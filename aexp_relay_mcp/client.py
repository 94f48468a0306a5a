"""RelayClient: validate -> build -> run -> parse -> audit.

The MCP server and the CLI are thin adapters over this class.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import anyio

from .audit import AuditLog
from .config import REMOTE_TIMEOUT_GRACE, RelayConfig, normalize_repo
from .connection import ConnectionManager
from .errors import (
    ConsentRequiredError,
    OpNamer,
    RelayDownError,
    RelayError,
    RelayTimeoutError,
    RelayValidationError,
    RemoteCommandError,
    plain_op_name,
    render_hint,
)
from .ops import (
    OPS,
    BuildContext,
    OpSpec,
    WandbSyncArgs,
    build_check,
    build_wandb_preview,
    display_wandb_command,
    parse_wandb_preview,
    validate_request,
    wandb_words,
)
from .parsing import (
    Failure,
    GitProgress,
    classify_git_failure,
    classify_ssh_failure,
    clean_text,
    git_version_ok,
    guard_failure,
    human_size,
    tail,
)
from .remote import (
    Script,
    ScriptOutput,
    build_remote_command,
    build_ssh_argv,
    marker,
    parse_script_output,
    validate_host,
    validate_repo,
)
from .results import ConnectionStatus, OpResult, WandbPreview, WandbSyncResult
from .runner import ProcessResult, ProcessTimeout, Runner, kill_live_groups, run_process

ProgressFn = Callable[[float, str], None]

MAX_TIMEOUT_S = 24 * 3600.0
REMOTE_KILL_TIMEOUT_S = 10.0
CHECK_TIMEOUT_S = 30.0
SSH_TRANSPORT_FAILURE = 255


def new_request_id() -> str:
    return secrets.token_hex(6)


class RelayClient:
    """Runs whitelisted ops on ``ssh_host`` in ``remote_repo``.

    ``runner`` and ``clock`` are injected so pure tests can substitute them;
    everything else uses the real ssh.
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
        op_namer: OpNamer = plain_op_name,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        base = config if config is not None else RelayConfig.from_env()
        self.config = base.replace(
            ssh_host=ssh_host or base.ssh_host,
            remote_repo=remote_repo or base.remote_repo,
            timeout=timeout if timeout is not None else base.timeout,
        )
        self.runner = runner
        self.audit = audit if audit is not None else AuditLog(self.config.audit_log)
        self.op_namer = op_namer
        self.env = env
        self.clock = clock
        self.connections = ConnectionManager(self.config, clock)
        self._repo_locks: dict[tuple[str, str], asyncio.Lock] = {}
        # nonce -> (host, remote process group) of commands running now
        self._inflight: dict[str, tuple[str, int]] = {}

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
        rid = new_request_id()
        started = self.clock()
        host = ssh_host or self.config.ssh_host
        repo = remote_repo or self.config.remote_repo
        audit: dict[str, Any] = {"request_id": rid, "op": op, "args": args, "host": host}
        audit.update(repo=repo, approved=approve)
        try:
            spec, parsed = validate_request(op, args)
            host, repo = self._target(host, repo)
            if not isinstance(approve, bool):
                raise RelayValidationError(
                    "approve must be true or false.",
                    hint="Pass approve=true only after the user agreed.",
                )
            limit = self._timeout(spec, timeout)
            ctx = BuildContext(repo=repo, wandb_words=wandb_words(self.config.wandb))
            lock = self._repo_locks.setdefault((host, repo), asyncio.Lock())
            if spec.consent:
                result: OpResult = await self._wandb_sync(
                    spec, parsed, ctx, host, approve, limit, rid, started, lock, on_progress, audit
                )
            else:
                async with _maybe(lock, spec.mutating):
                    out = await self._execute(
                        spec.build(parsed, ctx),
                        host,
                        repo,
                        limit,
                        spec=spec,
                        on_progress=on_progress,
                        trace=audit,
                    )
                result = spec.result_model(
                    op=op,
                    request_id=rid,
                    host=host,
                    repo=repo,
                    duration_s=round(self.clock() - started, 4),
                    **spec.parse(out, parsed),
                )
        except RelayError as exc:
            exc.request_id = rid
            self._audit(audit, started, _outcome(exc), exc.kind, exc.exit_code)
            raise
        except asyncio.CancelledError:
            self._audit(audit, started, "cancelled", "cancelled", None)
            raise
        self._audit(audit, started, "ok", None, 0)
        return result

    async def check_connection(
        self,
        ssh_host: str | None = None,
        remote_repo: str | None = None,
        *,
        timeout: float | None = None,
    ) -> ConnectionStatus:
        """Reachability, round trip, repo, branch, git version and wandb; never raises
        for an unreachable host (that is a normal answer, with a hint)."""
        rid = new_request_id()
        started = self.clock()
        try:
            host, repo = self._target(ssh_host, remote_repo, repo_required=False)
        except RelayValidationError as exc:
            exc.request_id = rid
            audit_rejected = {"request_id": rid, "op": "check_connection", "host": ssh_host}
            self._audit(audit_rejected, started, "rejected", exc.kind, None)
            raise
        ctx = BuildContext(repo=repo or "", wandb_words=wandb_words(self.config.wandb))
        limit = timeout or min(self.config.timeout or CHECK_TIMEOUT_S, CHECK_TIMEOUT_S)
        base: dict[str, Any] = {
            "host": host,
            "repo": repo,
            "request_id": rid,
            "repo_exists": None,
            "is_git_repo": None,
            "branch": None,
            "git_version": None,
            "wandb_available": None,
            "shared_connection": None,
            "shared_connection_age_s": None,
            "control_path": None,
        }
        audit = {"request_id": rid, "op": "check_connection", "host": host, "repo": repo}
        try:
            body = build_check(ctx)
            out = await self._execute(
                body, host, repo or "~", limit, enter=False, check=False, trace=audit
            )
        except (RelayDownError, RelayTimeoutError) as exc:
            self._audit(audit, started, _outcome(exc), exc.kind, exc.exit_code)
            return ConnectionStatus(
                **base,
                reachable=False,
                rtt_ms=None,
                problem=exc.kind,
                hint=f"{exc.message} {render_hint(exc.hint_template, self.op_namer)}",
                duration_s=round(self.clock() - started, 4),
            )
        elapsed = self.clock() - started
        status = self._interpret_check(out, base, repo)
        shared = await self.connections.check(host)
        status.update(
            shared_connection=shared.live if shared.enabled else None,
            shared_connection_age_s=shared.age_s,
            control_path=shared.control_path,
        )
        self._audit(audit, started, "ok", status.get("problem"), out.exit_code)
        return ConnectionStatus(
            **status, reachable=True, rtt_ms=round(elapsed * 1000, 1), duration_s=round(elapsed, 4)
        )

    # ------------------------------------------------------------------ internals

    def _target(
        self, ssh_host: str | None, remote_repo: str | None, *, repo_required: bool = True
    ) -> tuple[str, str]:
        """Validate host and repo, and confine them to the allowlists when those are set."""
        host = validate_host(ssh_host or self.config.ssh_host)
        repo_in = remote_repo or self.config.remote_repo
        repo = validate_repo(repo_in) if (repo_in or repo_required) else ""
        allowed_hosts, allowed_repos = self.config.allowed_hosts, self.config.allowed_repos
        if allowed_hosts and host not in allowed_hosts:
            raise RelayValidationError(
                f"ssh host {host!r} is not in AEXP_RELAY_ALLOWED_HOSTS.",
                hint=f"Allowed hosts: {', '.join(allowed_hosts)}. "
                "Omit ssh_host to use the default.",
            )
        if allowed_repos and repo and normalize_repo(repo) not in allowed_repos:
            raise RelayValidationError(
                f"remote repo {repo!r} is not in AEXP_RELAY_ALLOWED_REPOS.",
                hint=f"Allowed repos: {', '.join(allowed_repos)}. "
                "Omit remote_repo to use the default.",
            )
        return host, repo

    def _timeout(self, spec: OpSpec, timeout: float | None) -> float:
        limit = timeout if timeout is not None else (self.config.timeout or spec.default_timeout)
        if isinstance(limit, bool) or not isinstance(limit, (int, float)):
            raise RelayValidationError(
                f"timeout must be a number of seconds, not {type(limit).__name__}.",
                hint=f"Pass a number between 1 and {MAX_TIMEOUT_S:g}.",
            )
        if not 0 < limit <= MAX_TIMEOUT_S or limit != limit:
            raise RelayValidationError(
                f"timeout {limit!r} is out of range.",
                hint=f"Pass a number of seconds greater than 0 and at most {MAX_TIMEOUT_S:g}.",
            )
        return float(limit)

    async def wandb_preview(
        self,
        runs: list[str] | None = None,
        *,
        ssh_host: str | None = None,
        remote_repo: str | None = None,
    ) -> WandbPreview:
        """What ``wandb_sync`` would upload: runs, sizes and the exact command. Uploads nothing."""
        _, parsed = validate_request("wandb_sync", {"runs": runs} if runs is not None else None)
        host, repo = self._target(ssh_host, remote_repo)
        assert repo is not None and isinstance(parsed, WandbSyncArgs)
        ctx = BuildContext(repo=repo, wandb_words=wandb_words(self.config.wandb))
        return await self._wandb_preview(parsed, ctx, host, CHECK_TIMEOUT_S)

    async def _wandb_preview(
        self, args: WandbSyncArgs, ctx: BuildContext, host: str, limit: float
    ) -> WandbPreview:
        preview_out = await self._execute(
            build_wandb_preview(args, ctx), host, ctx.repo, min(limit, CHECK_TIMEOUT_S)
        )
        wanted, total, available = parse_wandb_preview(preview_out, args, ctx)
        missing = sorted(set(args.runs or []) - {r.name for r in wanted})
        if missing:
            failure = guard_failure("run_not_found")
            raise RemoteCommandError(
                f"{failure.message} Not found: {', '.join(missing)}.",
                kind=failure.kind,
                hint=failure.hint,
                details={"missing_runs": missing},
            )
        names = [r.name for r in wanted]
        return WandbPreview(
            runs=wanted,
            total_bytes=sum(r.size_bytes for r in wanted),
            all_runs=total,
            command=display_wandb_command(ctx, names) if names else "",
            wandb_available=available,
        )

    async def _wandb_sync(
        self,
        spec: OpSpec,
        args: Any,
        ctx: BuildContext,
        host: str,
        approve: bool,
        limit: float,
        rid: str,
        started: float,
        lock: asyncio.Lock,
        on_progress: ProgressFn | None,
        trace: dict[str, Any],
    ) -> OpResult:
        assert isinstance(args, WandbSyncArgs)
        preview = await self._wandb_preview(args, ctx, host, limit)
        names = [r.name for r in preview.runs]
        common: dict[str, Any] = {
            "op": spec.name,
            "request_id": rid,
            "host": host,
            "repo": ctx.repo,
        }
        if not names:
            return WandbSyncResult(
                **common,
                duration_s=round(self.clock() - started, 4),
                synced=[],
                command=None,
                output_tail="Nothing to sync: every offline run under wandb/ is already synced.",
            )
        if not approve:
            raise ConsentRequiredError(
                f"Uploading {len(names)} offline run(s), {human_size(preview.total_bytes)}, to "
                "Weights & Biases needs the user's approval. Nothing was uploaded.",
                preview=preview,
                hint="Show the user the runs, sizes and command in the preview. Only if they "
                "agree, run {op:wandb_sync} again with approval (approve=true, or --approve "
                "on the command line) for the same runs.",
            )
        if not preview.wandb_available:
            failure = guard_failure("wandb_missing")
            raise RemoteCommandError(failure.message, kind=failure.kind, hint=failure.hint)
        pinned = args.model_copy(update={"runs": names})
        async with lock:
            out = await self._execute(
                spec.build(pinned, ctx),
                host,
                ctx.repo,
                limit,
                spec=spec,
                on_progress=on_progress,
                trace=trace,
            )
        return WandbSyncResult(
            **common,
            **spec.parse(out, pinned),
            duration_s=round(self.clock() - started, 4),
            command=preview.command,
        )

    async def _execute(
        self,
        body: Script,
        host: str,
        repo: str,
        limit: float,
        *,
        spec: OpSpec | None = None,
        enter: bool = True,
        check: bool = True,
        on_progress: ProgressFn | None = None,
        trace: dict[str, Any] | None = None,
    ) -> ScriptOutput:
        """Run a script body over ssh; turn transport and remote failures into errors."""
        started = self.clock()
        nonce = secrets.token_hex(8)
        command = build_remote_command(
            body, repo, nonce, timeout=limit, grace=REMOTE_TIMEOUT_GRACE, enter=enter
        )
        verbose_log = self._verbose_log_path(nonce)
        options, multiplexed = await self._connection_options(host, limit)
        if trace is not None:
            trace["multiplexed"] = multiplexed
        argv = build_ssh_argv(
            ssh_bin=self.config.ssh_bin,
            host=host,
            remote_command=command,
            connect_timeout=self.config.connect_timeout,
            ssh_config=self.config.ssh_config,
            verbose_log=verbose_log,
            extra_options=options,
        )
        remaining = max(0.5, limit - (self.clock() - started))
        pid_watch = _RemotePidWatch(
            marker(nonce), lambda pid: self._inflight.update({nonce: (host, pid)})
        )
        progress = GitProgress(on_progress) if on_progress else None

        def on_stderr(chunk: bytes) -> None:
            pid_watch.feed(chunk)
            if progress is not None:
                progress.feed(chunk)

        try:
            async with self.connections.session_slot(host):
                proc = await self.runner(
                    argv,
                    timeout=remaining,
                    output_cap=self.config.output_cap,
                    env=self.env,
                    on_stderr=on_stderr,
                )
        except FileNotFoundError:
            raise self._ssh_missing() from None
        except ProcessTimeout as exc:
            await self._kill_remote(host, pid_watch.pid)
            partial = parse_script_output(exc.result.stdout, exc.result.stderr, nonce)
            where = (
                "The command had started on the login node and was stopped there too."
                if pid_watch.pid
                else "ssh had not got the command running yet (stuck connecting, in a "
                "ProxyCommand/ProxyJump, or authenticating)."
            )
            raise RelayTimeoutError(
                f"The call did not finish within {limit:g}s on {host}. {where}",
                hint="Retry with a larger timeout if the op is slow (big fetch, slow filesystem); "
                "run {op:status} to check the connection. " + _verbose_hint(verbose_log),
                stderr_tail=tail(partial.stderr + _log_tail(verbose_log)),
                details={"timeout_s": limit},
            ) from None
        except asyncio.CancelledError:
            with anyio.CancelScope(shield=True):
                await self._kill_remote(host, pid_watch.pid)
            raise
        finally:
            self._inflight.pop(nonce, None)
        self.connections.note_result(host, proc.stderr)
        out = parse_script_output(proc.stdout, proc.stderr, nonce)
        if out.exit_code is None and pid_watch.pid is not None:
            # The command started but never reported back (the connection dropped):
            # end it on the login node through a new connection.
            with anyio.CancelScope(shield=True):
                await self._kill_remote(host, pid_watch.pid)
        if check:
            self._raise_for(out, proc, spec, verbose_log)
        elif out.exit_code is None:
            self._raise_transport(out, proc, verbose_log)
        return out

    async def _connection_options(self, host: str, limit: float) -> tuple[list[str], bool]:
        """ssh options for sharing the host's master, starting one if needed, within limit."""
        try:
            return await asyncio.wait_for(self.connections.options_for(host), limit)
        except asyncio.TimeoutError:
            raise RelayTimeoutError(
                f"Could not connect to {host} within {limit:g}s (starting the shared ssh "
                "connection hung: a ProxyCommand/ProxyJump, the network, or a login prompt).",
                hint="Check the host with plain ssh in a terminal; for MFA clusters run "
                "`aexp-relay-mcp connect` once. Set AEXP_RELAY_CONTROL_PERSIST=no to "
                "connect directly.",
                details={"timeout_s": limit},
            ) from None
        except FileNotFoundError:
            raise self._ssh_missing() from None

    def _ssh_missing(self) -> RelayDownError:
        return RelayDownError(
            f"The ssh program {self.config.ssh_bin!r} was not found on this machine.",
            kind="ssh_missing",
            hint="Install the OpenSSH client, or set AEXP_RELAY_SSH_BIN to its path.",
        )

    def _raise_transport(
        self, out: ScriptOutput, proc: ProcessResult, verbose_log: Path | None
    ) -> NoReturn:
        stderr = out.stderr + _log_tail(verbose_log)
        if proc.exit_code == SSH_TRANSPORT_FAILURE or out.remote_pid is None:
            f = classify_ssh_failure(stderr)
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
        if out.exit_code is None:
            self._raise_transport(out, proc, verbose_log)
        if out.exit_code == 0:
            return
        code = out.exit_code
        # git puts some reasons on stdout (push --porcelain, rebase's CONFLICT lines).
        said = out.stderr + "\n" + out.stdout
        failure: Failure = guard_failure(out.kind) if out.kind else classify_git_failure(said, code)
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

    def _interpret_check(
        self, out: ScriptOutput, base: dict[str, Any], repo: str | None
    ) -> dict[str, Any]:
        status = dict(base)
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
            if out.kind:
                problem = guard_failure(out.kind)
            elif inside is not None and inside.exit_code != 0 and problem is None:
                problem = classify_git_failure(inside.stderr, inside.exit_code)
        status["problem"] = problem.kind if problem else None
        status["hint"] = (
            f"{problem.message} {render_hint(problem.hint, self.op_namer)}" if problem else ""
        )
        return status

    def _verbose_log_path(self, nonce: str) -> Path | None:
        if not self.config.ssh_verbose:
            return None
        directory = self.config.verbose_log_dir
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return directory / f"ssh-{time.strftime('%Y%m%d-%H%M%S')}-{nonce}.log"

    def _kill_remote_argv(self, host: str, pid: int) -> list[str]:
        """Internal, not an op: the pid is an integer the remote wrapper reported."""
        command = (
            f"kill -TERM -{int(pid)} 2>/dev/null || exit 0; sleep 1; "
            f"kill -KILL -{int(pid)} 2>/dev/null; exit 0"
        )
        return build_ssh_argv(
            ssh_bin=self.config.ssh_bin,
            host=host,
            remote_command=command,
            connect_timeout=min(self.config.connect_timeout, 5),
            ssh_config=self.config.ssh_config,
            extra_options=self.connections.live_options(host),
        )

    async def _kill_remote(self, host: str, pid: int | None) -> None:
        """End the op's process group on the login node (best effort, bounded)."""
        if pid is None or pid <= 1:
            return
        argv = self._kill_remote_argv(host, pid)
        with contextlib.suppress(ProcessTimeout, OSError):
            await self.runner(argv, timeout=REMOTE_KILL_TIMEOUT_S, output_cap=4096, env=self.env)

    def emergency_stop(self, wait_s: float = 3.0) -> None:
        """Synchronous last resort at shutdown (SIGTERM, SIGHUP): end every local child
        group and every remote command this client still has running."""
        kill_live_groups(signal.SIGKILL)
        procs = []
        for host, pid in list(self._inflight.values()):
            if pid > 1:
                with contextlib.suppress(OSError):
                    procs.append(
                        subprocess.Popen(
                            self._kill_remote_argv(host, pid),
                            stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            start_new_session=True,
                        )
                    )
        deadline = time.monotonic() + wait_s
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        self._inflight.clear()

    def _audit(
        self,
        base: dict[str, Any],
        started: float,
        outcome: str,
        kind: str | None,
        exit_code: int | None,
    ) -> None:
        self.audit.record(
            **base,
            outcome=outcome,
            kind=kind,
            exit_code=exit_code,
            duration_s=round(self.clock() - started, 4),
        )


class _RemotePidWatch:
    """Picks the remote process-group id out of the stderr stream as it arrives."""

    def __init__(self, mark: str, on_pid: Callable[[int], None]) -> None:
        self.pattern = re.compile(re.escape(mark.encode()) + rb" pid (\d+)\n")
        self.buffer = b""
        self.pid: int | None = None
        self.on_pid = on_pid

    def feed(self, chunk: bytes) -> None:
        if self.pid is not None or len(self.buffer) > 65536:
            return
        self.buffer += chunk
        match = self.pattern.search(self.buffer)
        if match:
            self.pid = int(match.group(1))
            self.buffer = b""
            self.on_pid(self.pid)


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
        files = []
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


def _outcome(exc: RelayError) -> str:
    if isinstance(exc, RelayValidationError):
        return "rejected"
    if isinstance(exc, ConsentRequiredError):
        return "consent_required"
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


__all__ = ["OPS", "RelayClient"]
