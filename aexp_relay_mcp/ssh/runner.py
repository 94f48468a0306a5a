"""An async process runner that knows nothing of ssh or git.

Policy, in one place:

* stdin is /dev/null; the child leads its own session, so its whole process
  group (ProxyCommand included) can be killed at once;
* stdout and stderr are our own pipes, read incrementally into capped buffers
  that keep the head and the tail of each stream (the tail holds the markers);
* a timeout or a cancellation sends SIGTERM to the group, then SIGKILL after a
  short grace, and reaps the child inside a shielded scope;
* a non-zero exit is not an error here: callers decide what it means.

| raises                  | when                                   |
|-------------------------|----------------------------------------|
| ProcessTimeout          | the timeout passed; carries the partial result |
| asyncio.CancelledError  | the caller was cancelled (after cleanup) |
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio

from ..model.text import ELISION as TEXT_ELISION

# ssh ends on SIGTERM at once; the grace only matters for a child that ignores it.
KILL_GRACE_S = 0.2
# After the child exits, how long to keep reading pipes that a stray grandchild
# may still hold open (a ControlMaster, a ProxyCommand) before closing them.
PIPE_DRAIN_S = 0.3
# After a timeout or cancel: an ssh client that handed our pipes to a ControlMaster leaves
# them open until the remote side ends, which waits on our own remote kill.
STOPPED_DRAIN_S = 0.01
TAIL_BYTES = 64 * 1024
ELISION = TEXT_ELISION.encode()


@dataclass(frozen=True)
class ProcessResult:
    """A finished (or stopped) process.

    | field              | meaning                                          |
    |--------------------|--------------------------------------------------|
    | argv               | what ran                                         |
    | exit_code          | the exit status; negative for a signal; None if never reaped |
    | stdout / stderr    | decoded with replacement; head + tail when truncated |
    | *_truncated        | the stream exceeded the cap                      |
    | *_bytes            | the stream's full length                         |
    | duration_s         | wall time                                        |
    """

    argv: tuple[str, ...]
    exit_code: int | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    stdout_bytes: int
    stderr_bytes: int
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class ProcessTimeout(Exception):
    def __init__(self, result: ProcessResult, timeout: float) -> None:
        super().__init__(f"process timed out after {timeout:g}s")
        self.result = result
        self.timeout = timeout


class CappedBuffer:
    """Keeps the first ``cap`` bytes and the last ``TAIL_BYTES``; counts the rest."""

    def __init__(self, cap: int, tail: int = TAIL_BYTES) -> None:
        self.cap = max(0, cap)
        self.tail_cap = min(tail, self.cap) if self.cap else 0
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.cap - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk and self.tail_cap:
            self.tail += chunk
            if len(self.tail) > self.tail_cap:
                del self.tail[: len(self.tail) - self.tail_cap]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.head) + len(self.tail)

    def value(self) -> bytes:
        if self.truncated:
            return bytes(self.head) + ELISION + bytes(self.tail)
        return bytes(self.head) + bytes(self.tail)

    def text(self) -> str:
        # Invalid UTF-8 stays visible as \xNN escapes instead of turning into U+FFFD.
        return self.value().decode("utf-8", errors="backslashreplace")


@dataclass(frozen=True)
class Execution:
    """A command under way: how to stop it at once, and its local process, if any (None:
    it runs in a session of a shared connection, with nothing local to reap)."""

    abort: Callable[[], None]
    pid: int | None


OnStart = Callable[[Execution], None]  # hands the caller the command under way


class Runner(Protocol):
    async def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        output_cap: int,
        env: Mapping[str, str] | None = None,
        on_stderr: Callable[[bytes], None] | None = None,
        on_start: OnStart | None = None,
    ) -> ProcessResult: ...


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel task and wait until it has ended, whatever it ends with."""
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


def kill_group(pid: int, sig: int) -> bool:
    """Signal a process group; False if it is already gone."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


async def _pump(fd: int, buf: CappedBuffer, on_chunk: Callable[[bytes], None] | None) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    try:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            buf.feed(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
    finally:
        transport.close()


class OutputCollector:
    """Reads a command's stdout and stderr pipes into capped buffers, as they arrive.

    Shared by the process runner and the native ControlMaster client (``mux.py``).
    """

    def __init__(
        self, out_fd: int, err_fd: int, cap: int, on_stderr: Callable[[bytes], None] | None
    ) -> None:
        self.out, self.err = CappedBuffer(cap), CappedBuffer(cap)
        self.pumps = [
            asyncio.ensure_future(_pump(out_fd, self.out, None)),
            asyncio.ensure_future(_pump(err_fd, self.err, on_stderr)),
        ]

    async def drain(self, timeout: float) -> bool:
        """Wait up to timeout for both streams to end; True if they did."""
        _, pending = await asyncio.wait(self.pumps, timeout=timeout)
        return not pending

    async def stop(self) -> None:
        for task in self.pumps:
            task.cancel()
        await asyncio.gather(*self.pumps, return_exceptions=True)

    def note(self, line: str) -> None:
        """Add a line of our own to stderr (e.g. why a shared connection ended)."""
        self.err.feed(f"\n{line}\n".encode())

    def result(self, argv: Sequence[str], exit_code: int | None, started: float) -> ProcessResult:
        return ProcessResult(
            argv=tuple(argv),
            exit_code=exit_code,
            stdout=self.out.text(),
            stderr=self.err.text(),
            stdout_truncated=self.out.truncated,
            stderr_truncated=self.err.truncated,
            stdout_bytes=self.out.total,
            stderr_bytes=self.err.total,
            duration_s=time.monotonic() - started,
        )


async def run_process(
    argv: Sequence[str],
    *,
    timeout: float,
    output_cap: int,
    env: Mapping[str, str] | None = None,
    on_stderr: Callable[[bytes], None] | None = None,
    on_start: OnStart | None = None,
) -> ProcessResult:
    """Run argv to completion, timeout or cancellation. See the module docstring.

    ``on_start(execution)`` hands the caller a synchronous abort (SIGKILL to the child's
    whole group) and the child's pid, for a shutdown that cannot wait for this coroutine.
    """
    if not timeout > 0:
        raise ValueError("timeout must be positive")
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    except BaseException:
        for fd in (out_r, out_w, err_r, err_w):
            os.close(fd)
        raise
    os.close(out_w)
    os.close(err_w)
    collector = OutputCollector(out_r, err_r, output_cap, on_stderr)
    if on_start is not None:

        def abort() -> None:
            kill_group(proc.pid, signal.SIGKILL)

        on_start(Execution(abort, proc.pid))
    return await _supervise(
        proc, collector, timeout, lambda: collector.result(argv, proc.returncode, started)
    )


async def _supervise(
    proc: asyncio.subprocess.Process,
    collector: OutputCollector,
    timeout: float,
    result: Callable[[], ProcessResult],
) -> ProcessResult:
    try:
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            await _stop(proc, collector)
            raise ProcessTimeout(result(), timeout) from None
        await _drain(proc, collector)
        return result()
    except asyncio.CancelledError:
        # Shield the cleanup: the group must die and the child be reaped even
        # though our caller is going away.
        cleanup = asyncio.ensure_future(_stop(proc, collector))
        with anyio.CancelScope(shield=True):
            while not cleanup.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({cleanup})
        raise


async def _drain(
    proc: asyncio.subprocess.Process, collector: OutputCollector, wait_s: float = PIPE_DRAIN_S
) -> None:
    if not await collector.drain(wait_s):
        # Something in the child's group still holds our pipes: end it.
        kill_group(proc.pid, signal.SIGKILL)
        if not await collector.drain(wait_s):
            await collector.stop()


async def _stop(proc: asyncio.subprocess.Process, collector: OutputCollector) -> None:
    if proc.returncode is None:
        kill_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), KILL_GRACE_S)
        except asyncio.TimeoutError:
            kill_group(proc.pid, signal.SIGKILL)
            await proc.wait()
    # The leader may be gone while others in its group live on.
    kill_group(proc.pid, signal.SIGKILL)
    await _drain(proc, collector, STOPPED_DRAIN_S)
