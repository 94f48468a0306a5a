"""What every op flow needs of a call's life, in one place.

``CallRunner`` opens a call (its ``Call``, audited), checks where it goes (host, repo,
allowlists), bounds its time, builds its script context, executes its scripts over the
transport, turns their output into a result or an error, and ends it with the right
audit outcome. The git ops, the status check and the wandb consent flow all run through
it; none of them reaches into another.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio

from ..model.budget import fit
from ..model.config import REMOTE_TIMEOUT_GRACE, RelayConfig
from ..model.errors import (
    RelayDownError,
    RelayError,
    RelayTimeoutError,
    RelayValidationError,
    Surface,
)
from ..model.results import OpResult
from ..model.targets import normalize_repo, validate_host, validate_repo
from ..model.text import tail
from ..remote.ops import BuildContext, DropProbe, OpSpec, wandb_words
from ..remote.output import ScriptOutput, UnparseableOutput, parse_script_output
from ..remote.parsing import GitProgress
from ..remote.rollback import UNDO_S, UndoReport, parse_report, probe_report
from ..remote.script import Script, build_remote_command
from ..ssh.login_shell import CommandTooLong
from ..ssh.masters import NEEDS_A_HUMAN
from ..ssh.runner import ProcessTimeout
from ..ssh.transport import Transport
from .audit import AuditLog
from .call import Call, LiveCalls
from .diagnose import (
    dropped_needs_a_human,
    log_tail,
    outcome_of,
    remote_failure,
    ssh_missing,
    transport_failure,
    undo_details,
    undo_sentence,
    unparseable,
    verbose_hint,
)

ProgressFn = Callable[[float, str], None]

MAX_TIMEOUT_S = 24 * 3600.0
# The short call that reads what a cut op's undo reported.
PROBE_S = 15.0
# A read-only call cut by a dropped connection runs again only with this much time left.
RETRY_MIN_S = 1.0


class CallRunner:
    def __init__(
        self,
        config: RelayConfig,
        *,
        audit: AuditLog,
        transport: Transport,
        surface: Surface,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.audit = audit
        self.transport = transport
        self.surface = surface
        self.clock = clock
        self.live = LiveCalls()
        # Set by the server: True once its client has gone (stdin closed), so a call the
        # SDK cancels then is audited as interrupted, not as cancelled by the client.
        self.shutting_down: Callable[[], bool] = lambda: False
        self._repo_locks: dict[tuple[str, str], asyncio.Lock] = {}

    # ------------------------------------------------------------------ opening and ending

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
            live=self.live,
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
        if call.warnings:
            exc.details.setdefault("warnings", list(call.warnings))
        if isinstance(exc, RelayTimeoutError):
            exc.details.setdefault("timeout_s", round(call.deadline - call.started, 3))
        call.finish(outcome_of(exc), exc.kind, exc.exit_code)

    # ------------------------------------------------------------------ where and how long

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

    def limit_for(self, spec: OpSpec, timeout: float | None) -> float:
        limit = timeout if timeout is not None else (self.config.timeout or spec.default_timeout)
        return check_timeout(limit)

    def context(self, call: Call) -> BuildContext:
        return BuildContext(
            repo=call.repo or "",
            wandb_words=wandb_words(self.config.wandb),
            wandb_dir=self.config.wandb_dir,
            request_id=call.request_id,
        )

    def repo_lock(self, call: Call) -> asyncio.Lock:
        """Mutating ops on one checkout run one at a time (in this process)."""
        return self._repo_locks.setdefault((call.host or "", call.repo or ""), asyncio.Lock())

    # ------------------------------------------------------------------ running

    def result(
        self, call: Call, spec: OpSpec, out: ScriptOutput, parsed: Any, **extra: Any
    ) -> OpResult:
        """The op's frozen result; unreadable output is an error, never a guess."""
        try:
            fields = spec.parse(out, parsed)
        except UnparseableOutput as exc:
            raise unparseable(out, str(exc)) from None
        return fit(
            spec.result_model(
                op=spec.name,
                request_id=call.request_id,
                host=call.host or "",
                repo=call.repo or "",
                duration_s=round(call.elapsed, 4),
                warnings=list(call.warnings),
                **fields,
                **extra,
            )
        )

    async def execute(
        self,
        call: Call,
        body: Script,
        *,
        spec: OpSpec | None = None,
        enter: bool = True,
        check: bool = True,
        retry: bool = False,
        after_drop: DropProbe | None = None,
        on_progress: ProgressFn | None = None,
        on_stderr: Callable[[bytes], None] | None = None,
    ) -> ScriptOutput:
        """Run a script body over ssh for call; turn transport and remote failures into errors.
        Progress: ``on_progress`` gets git's percentages; ``on_stderr`` reads stderr itself.

        A dropped connection is routine. A read-only call (``retry``, or its op's
        ``retry_on_drop``) runs once more over a new connection, within its deadline (a
        fetch's first run is ended on the host first). Any other call is never run again:
        its error says what became of the checkout (the undo's report, or ``after_drop``'s
        probe)."""
        retry = spec.retry_on_drop if spec is not None else retry
        # An op that undoes itself when cut gets the time to (remote TERM-to-KILL, our wait).
        call.undo_s = UNDO_S if spec is not None and spec.undoes else 0.0
        if on_stderr is None and on_progress is not None:
            on_stderr = GitProgress(on_progress).feed
        host = call.host or ""
        first: RelayError | None = None
        while True:
            try:
                out, error = await self._attempt(call, body, spec, enter, check, on_stderr)
            except RelayDownError as exc:
                if first is not None and exc.kind in NEEDS_A_HUMAN:
                    raise dropped_needs_a_human(first, exc, host) from None
                raise
            dropped = error is not None and error.kind == "connection_dropped"
            if dropped and retry and first is None and self._time_to_retry(call):
                assert error is not None
                if spec is not None and spec.mutating:
                    # a fetch: the first run must be gone before the second takes its locks
                    with anyio.CancelScope(shield=True):
                        await call.stop_remote(unconfirmed=True)
                else:
                    # one that only reads ends by itself (its next write finds no reader,
                    # and the login node's time limit bounds it): not worth a round trip
                    call.remote = call.unconfirmed = None
                call.retrying(error)
                first = error
                continue
            if out.exit_code is None and (call.remote is not None or dropped):
                # It was sent but never reported back (the connection dropped): end it on
                # the login node through a new session, and find out what it left.
                with anyio.CancelScope(shield=True):
                    await self._after_cut(call, out, error, after_drop if dropped else None)
            if error is not None:
                raise error
            return out

    async def _attempt(
        self,
        call: Call,
        body: Script,
        spec: OpSpec | None,
        enter: bool,
        check: bool,
        on_stderr: Callable[[bytes], None] | None,
    ) -> tuple[ScriptOutput, RelayError | None]:
        """One run of the script: its output, and the error it means (None: success)."""
        nonce = secrets.token_hex(8)
        command = build_remote_command(
            body,
            call.repo or "~",
            nonce,
            timeout=max(0.1, call.deadline - self.clock()),
            grace=REMOTE_TIMEOUT_GRACE,
            enter=enter,
            undo_s=call.undo_s,
        )
        verbose_log = self._verbose_log_path(nonce)
        try:
            run = await call.run(command, nonce, on_stderr=on_stderr, verbose_log=verbose_log)
        except FileNotFoundError:
            raise ssh_missing(self.config.ssh_bin) from None
        except CommandTooLong as exc:
            raise RelayValidationError(
                f"The request is too large to send to the login node: {exc}. Nothing ran.",
                hint="Ask for less in one call (fewer runs: narrow with {arg:match}, "
                "{arg:to_run} or {arg:limit}).",
            ) from None
        except ProcessTimeout as exc:
            raise await self._timed_out(call, exc, nonce, verbose_log) from None
        except asyncio.CancelledError:
            # Judged now: by the time the remote group is gone the client may have left.
            call.cancelled_as = call.cancelled_as or self._cancel_outcome()
            with anyio.CancelScope(shield=True):
                cut = await self._stop_and_report(call, None)
                if cut is not None:  # no result goes back: the audit line says it
                    call.trace.update(checkout=cut.state, head=cut.head)
            raise
        out = parse_script_output(run.result.stdout, run.result.stderr, nonce)
        host, repo = call.host or "", call.repo or ""
        connections = self.transport.connections
        if out.login_shell:  # named in the error when a later command cannot start
            connections.remember_login_shell(host, out.login_shell)
        if out.exit_code is not None:
            call.command_ended()
        shell = connections.login_shell(host)
        if check:
            op = spec.name if spec else None
            return out, remote_failure(out, run.result, op, verbose_log, host, repo, shell)
        if not out.started or out.exit_code is None:
            return out, transport_failure(out, run.result, verbose_log, host, shell)
        return out, None

    def _time_to_retry(self, call: Call) -> bool:
        return call.deadline - self.clock() >= RETRY_MIN_S

    async def _after_cut(
        self,
        call: Call,
        partial: ScriptOutput,
        error: RelayError | None,
        after_drop: DropProbe | None,
    ) -> None:
        """A command cut off from us: end it on the host (it may run on, or never have
        started), then say in the error what became of the checkout: an undoing op's
        report, or what ``after_drop`` reads (whether a push landed)."""
        host, repo = call.host or "", call.repo or ""
        started = call.remote is not None or call.unconfirmed is not None
        cut = await self._stop_and_report(call, partial, unconfirmed=True)
        if error is None or not started:
            return
        if cut is not None:
            error.message += " " + undo_sentence(cut, host, repo)
            error.details.update(undo_details(cut, repo))
        elif after_drop is not None:
            out = await self._probe(call, after_drop.script)
            sentence, details = after_drop.read(out)
            error.message += " " + sentence
            error.details.update(details)

    async def _probe(self, call: Call, body: Script) -> ScriptOutput | None:
        """A short read-only script in the call's repo, over whatever connection there is:
        what a cut op left. None when it cannot be read (a probe never replaces the error
        it explains)."""
        nonce = secrets.token_hex(8)
        command = build_remote_command(
            body, call.repo or "~", nonce, timeout=PROBE_S, grace=REMOTE_TIMEOUT_GRACE
        )
        try:
            run = await self.transport.run(
                call.host or "", command, deadline=self.clock() + PROBE_S
            )
        except Exception:
            return None
        return parse_script_output(run.result.stdout, run.result.stderr, nonce)

    async def _stop_and_report(
        self, call: Call, partial: ScriptOutput | None, *, unconfirmed: bool = False
    ) -> UndoReport | None:
        """End the remote group (``unconfirmed``: also a command whose start never came
        back); for an op that undoes itself, wait until it has, and read its report. None
        for other ops, and when nothing had been sent."""
        started = call.remote is not None or (unconfirmed and call.unconfirmed is not None)
        await call.stop_remote(unconfirmed=unconfirmed)
        if not call.undo_s or not started:
            return None
        return await self._read_undo_report(call, partial)

    async def _read_undo_report(self, call: Call, partial: ScriptOutput | None) -> UndoReport:
        """The report the cut op's undo left in the repo (read and removed), or, without
        one, where HEAD is: state ``unknown``. An undo that ran before the cut (the step
        had failed) may have printed its report already."""
        printed = partial.section("undo") if partial is not None else None
        out = await self._probe(call, Script(probe_report(call.request_id)))
        report = out.section("report") if out is not None else None
        found = (
            parse_report(report.stdout) if report is not None and report.exit_code == 0 else None
        )
        if found is None and printed is not None:
            found = parse_report(printed.stdout)
        if found is not None:
            return found

        def said(source: ScriptOutput | None, name: str) -> str | None:
            section = source.section(name) if source is not None else None
            text = section.stdout.strip() if section is not None else ""
            return text or None

        return UndoReport(
            op=call.op,
            request_id=call.request_id,
            state="unknown",
            head=said(out, "head"),
            branch=said(out, "branch"),
            old=said(partial, "old"),
            target=said(partial, "target"),
            why="the undo left no report",
        )

    async def _timed_out(
        self, call: Call, exc: ProcessTimeout, nonce: str, verbose_log: Path | None
    ) -> RelayTimeoutError:
        started_remotely = call.remote is not None
        partial = parse_script_output(exc.result.stdout, exc.result.stderr, nonce)
        gone = await call.stop_remote()
        cut = (
            await self._read_undo_report(call, partial)
            if call.undo_s and started_remotely
            else None
        )
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
        host, repo = call.host or "", call.repo or ""
        message = f"The call did not finish within {limit:g}s on {host}. {where}"
        hint = (
            "Retry with a larger {arg:timeout} if the op is slow (big fetch, slow filesystem, "
            "slow hooks or filters); run {op:status} to check the connection."
        )
        details: dict[str, Any] = {}
        if cut is not None:
            message += " " + undo_sentence(cut, host, repo)
            details = undo_details(cut, repo)
            if cut.state == "as_before":
                hint = "Nothing changed. " + hint
            elif cut.state == "completed":
                hint = f"The {cut.op} had finished; {{op:repo_status}} shows the checkout."
            else:
                hint = (
                    f"Run restore_commands on {host} (a person, in a terminal), then "
                    "{op:repo_status}."
                )
        return RelayTimeoutError(
            message,
            hint=hint + verbose_hint(verbose_log),
            stderr_tail=tail(partial.stderr + log_tail(verbose_log)),
            details=details,
        )  # fail() adds timeout_s, as for every timeout

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
