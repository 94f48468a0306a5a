"""One call's life: its id, its audit lines, the remote process group it started, how
to stop it locally and on the login node, and its timing.

Timeouts, cancellation and shutdown all end a call through this object:

* a timeout or a cancel: the transport stops the local side; ``stop_remote`` ends the
  remote group and waits (bounded) until it is gone;
* a shutdown (SIGINT, SIGTERM, SIGHUP, stdin closed): ``LiveCalls.interrupt_all`` runs
  ``interrupt`` on every live call, synchronously: local side closed, the remote kill
  dispatched as a detached ``ssh`` that ends on its own, audit line ``interrupted``.

The audit log gets a ``started`` line before the first ssh and exactly one final line.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..model.errors import RelayError
from ..remote.script import marker
from ..ssh.procs import dead
from ..ssh.runner import Execution
from ..ssh.transport import RemoteRun, Transport
from .audit import AuditLog


def new_request_id() -> str:
    return secrets.token_hex(6)


class Call:
    def __init__(
        self,
        *,
        op: str,
        args: Mapping[str, Any] | None,
        host: str | None,
        repo: str | None,
        approved: bool,
        audit: AuditLog,
        transport: Transport,
        live: LiveCalls,
        surface: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.request_id = new_request_id()
        self.op, self.args, self.host, self.repo = op, args, host, repo
        self.approved = approved
        self.audit, self.transport, self.live = audit, transport, live
        self.surface = surface
        self.clock = clock
        self.started = clock()
        self.deadline = self.started + 3600.0
        self.outcome: str | None = None
        self.cancelled_as: str | None = None  # cancelled or interrupted, judged on arrival
        self.remote: tuple[str, int] | None = None  # (host, process group) running now
        # (host, the command's marker): sent, its start marker not seen yet (a connection
        # that drops then leaves it unknown whether, and where, it runs)
        self.unconfirmed: tuple[str, str] | None = None
        # Seconds the remote command may take, after TERM, to undo what it started (an op
        # whose script rolls itself back); 0 for ops that just end.
        self.undo_s = 0.0
        self.trace: dict[str, Any] = {}
        self.warnings: list[str] = []  # what the caller should know: a socket passed over
        self.attempts = 1  # a read-only call runs again once when the connection drops
        self._began = False
        self._execution: Execution | None = None
        self._local_pids: set[int] = set()

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    @property
    def reaped(self) -> bool:
        """No local process of this call is alive (a zombie is dead: it goes with us): what
        shutdown waits for. A session on a shared connection has none."""
        self._local_pids = {pid for pid in self._local_pids if not dead(pid)}
        return not self._local_pids

    def set_limit(self, seconds: float) -> None:
        self.deadline = self.started + seconds

    def _fields(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "op": self.op,
            "args": self.args,
            "host": self.host,
            "repo": self.repo,
            "approved": self.approved,
            "surface": self.surface,
        }

    def begin(self) -> None:
        """The ``started`` audit line: written once, before the first ssh."""
        if self._began:
            return
        self._began = True
        self.live.add(self)
        self.audit.record(**self._fields(), outcome="started")

    def finish(self, outcome: str, kind: str | None = None, exit_code: int | None = None) -> None:
        """The final audit line: written once; later calls change nothing."""
        if self.outcome is not None:
            return
        self.outcome = outcome
        self.live.discard(self)
        self.audit.record(
            **self._fields(),
            **self.trace,
            outcome=outcome,
            kind=kind,
            exit_code=exit_code,
            duration_s=round(self.elapsed, 4),
        )

    async def run(
        self,
        command: str,
        nonce: str,
        *,
        on_stderr: Callable[[bytes], None] | None = None,
        verbose_log: Path | None = None,
    ) -> RemoteRun:
        """Run one remote command for this call; the start marker tells us its group."""
        assert self.host is not None
        host = self.host
        self.begin()
        mark = marker(nonce)

        def started_there(pid: int) -> None:
            self.remote, self.unconfirmed = (host, pid), None

        watch = _StartWatch(mark, started_there)

        def feed(chunk: bytes) -> None:
            watch.feed(chunk)
            if on_stderr is not None:
                on_stderr(chunk)

        def on_start(execution: Execution) -> None:
            self._started(execution)
            self.unconfirmed = (host, mark)

        try:
            run = await self.transport.run(
                host,
                command,
                deadline=self.deadline,
                on_stderr=feed,
                on_start=on_start,
                verbose_log=verbose_log,
            )
        finally:
            self._execution = None
        self.trace.update(multiplexed=run.multiplexed, via=run.via)
        for warning in run.warnings:
            if warning not in self.warnings:
                self.warnings.append(warning)
                self.trace["warnings"] = list(self.warnings)
        return run

    def retrying(self, error: RelayError) -> None:
        """The connection dropped under a read-only call, which runs again: an audit line
        for the first run (same request id), and a warning in the result."""
        self.attempts += 1
        self.trace["attempts"] = self.attempts
        self.audit.record(
            **self._fields(),
            outcome="retrying",
            kind=error.kind,
            attempt=self.attempts - 1,
            duration_s=round(self.elapsed, 4),
        )
        self.warnings.append(
            f"The ssh connection to {self.host} dropped during this call; the relay ran the "
            "call again over a new connection. This result is from the second run."
        )

    def _started(self, execution: Execution) -> None:
        self._execution = execution
        if execution.pid is not None:
            self._local_pids.add(execution.pid)

    def command_ended(self) -> None:
        """The remote command reported its exit: nothing of ours runs there any more."""
        self.remote = self.unconfirmed = None

    async def stop_remote(self, *, unconfirmed: bool = False) -> bool:
        """End the remote process group (TERM, poll, KILL); True once it is gone. A command
        that undoes its changes on TERM is waited for until it has (``undo_s``).
        ``unconfirmed``: also a command sent whose start marker never arrived (the
        connection dropped), found on the host by its marker."""
        if self.remote is not None:
            host, pgid = self.remote
            self.remote = self.unconfirmed = None
            return await self.transport.kill_remote(host, pgid, undo_s=self.undo_s)
        if unconfirmed and self.unconfirmed is not None:
            host, mark = self.unconfirmed
            self.unconfirmed = None
            return await self.transport.kill_remote(host, None, needle=mark, undo_s=self.undo_s)
        return True

    def interrupt(self) -> None:
        """Shutdown: close the local side, dispatch the remote kill, audit ``interrupted``.
        Synchronous and quick: it never waits for the network."""
        if self._execution is not None:
            self._execution.abort()
        if self.remote is not None:
            host, pgid = self.remote
            self.remote = self.unconfirmed = None
            self.transport.kill_remote_detached(host, pgid, undo_s=self.undo_s)
        elif self.unconfirmed is not None:  # sent; its start had not come back yet
            host, mark = self.unconfirmed
            self.unconfirmed = None
            self.transport.kill_remote_detached(host, None, needle=mark, undo_s=self.undo_s)
        self.finish("interrupted", "interrupted")


class LiveCalls:
    """Every call that has reached ssh and not ended yet."""

    def __init__(self) -> None:
        self._calls: dict[str, Call] = {}

    def add(self, call: Call) -> None:
        self._calls[call.request_id] = call

    def discard(self, call: Call) -> None:
        self._calls.pop(call.request_id, None)

    def interrupt_all(self) -> list[Call]:
        """End every live call (shutdown). Returns them, so the caller can wait until their
        local processes are reaped."""
        calls = list(self._calls.values())
        for call in calls:
            call.interrupt()
        return calls


class _StartWatch:
    """Picks the remote process-group id out of the stderr stream as it arrives."""

    def __init__(self, mark: str, on_pid: Callable[[int], None]) -> None:
        self.needle = f"\n{mark} start ".encode()
        self.buffer = b"\n"
        self.done = False
        self.on_pid = on_pid

    def feed(self, chunk: bytes) -> None:
        if self.done or len(self.buffer) > 1 << 20:
            return
        self.buffer += chunk
        at = self.buffer.find(self.needle)
        end = self.buffer.find(b"\n", at + len(self.needle)) if at >= 0 else -1
        if end >= 0:
            pid = self.buffer[at + len(self.needle) : end].split(b" ", 1)[0]  # then $SHELL
            self.done = True
            self.buffer = b""
            if pid.isdigit():
                self.on_pid(int(pid))
