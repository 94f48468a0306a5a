"""OpenSSH's connection-sharing protocol (PROTOCOL.mux), spoken from asyncio.

A call over a live ControlMaster used to fork an ``ssh`` client that read its config,
connected to the master's socket and asked it for a session. Here the relay asks the
master itself: connect to the Unix socket, exchange HELLO (protocol 4), send
MUX_C_NEW_SESSION with the command, pass stdin (/dev/null), stdout and stderr (our
pipes) with SCM_RIGHTS, and read MUX_S_EXIT_MESSAGE. No process is started locally.
Measured on loopback: 4.7 ms a call instead of 11 ms, 8 calls at once in 20 ms instead
of 47 ms (benchmarks/bench_relay.py prints both paths side by side).

Wire format: ``uint32 length | uint32 type | body``; strings are ``uint32 length |
bytes``; the protocol's "bool" fields are uint32. Every master since OpenSSH 5.x speaks
version 4. When a master cannot be used (nothing listening, another protocol version),
``MasterUnavailable`` sends the caller to the spawned-ssh path, which stays the fallback.

Before the first byte, ``trust`` checks who owns the socket, where it is, and, once
connected, who the peer is: another account's socket gets nothing (``MasterUntrusted``).

| raises             | meaning                                                  |
|--------------------|----------------------------------------------------------|
| MasterUnavailable  | no usable master at the path: start one, or connect directly |
| MasterUntrusted    | a socket that is not the user's: never used, never removed |
| SessionRefused     | the master is up, the server refused a session: wait, retry |
| ProcessTimeout     | the timeout passed; carries the partial output           |
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import struct
import time
from collections.abc import Callable

from .runner import (
    Execution,
    OnStart,
    OutputCollector,
    ProcessResult,
    ProcessTimeout,
    cancel_and_wait,
)
from .trust import Distrust, peer_problem, socket_problem, vouch

MUX_VERSION = 4
MSG_HELLO = 0x00000001
C_NEW_SESSION = 0x10000002
C_ALIVE_CHECK = 0x10000004
C_TERMINATE = 0x10000005
S_OK = 0x80000001
S_PERMISSION_DENIED = 0x80000002
S_FAILURE = 0x80000003
S_EXIT_MESSAGE = 0x80000004
S_ALIVE = 0x80000005
S_SESSION_OPENED = 0x80000006
S_TTY_ALLOC_FAIL = 0x80000008
NO_ESCAPE_CHAR = 0xFFFFFFFF
MAX_PACKET = 256 * 1024
# A master answers HELLO at once (it is a local process); one that does not is stuck.
HELLO_TIMEOUT_S = 3.0
# How long pipes may stay open after the master closed the session.
DRAIN_S = 0.3
# After an abort or a timeout: the master keeps the pipes until the remote side ends,
# which waits on our own remote kill. Take what is already buffered and go.
ABORT_DRAIN_S = 0.01
REFUSED_BY_PEER = "Session open refused by peer"
# Added to stderr when the master went away mid-command (ssh.failures knows it): the
# transport checks, since a session also ends without a status when the remote command
# died of a signal on the host.
MASTER_CLOSED = "the shared ssh connection (ControlMaster) closed before the command finished"


class MuxError(Exception):
    pass


class MasterUnavailable(MuxError):
    """Nothing usable listens at the path. ``stale``: a socket file with no master behind
    it; ``wedged``: a master that accepts but never answers (stopped, or stuck)."""

    def __init__(self, message: str, *, stale: bool = False, wedged: bool = False) -> None:
        super().__init__(message)
        self.stale = stale
        self.wedged = wedged


class MasterUntrusted(MasterUnavailable):
    """A socket the relay will not talk to: not the user's, or not in a safe place
    (see ``trust``). Nothing was sent to it."""

    def __init__(self, distrust: Distrust) -> None:
        super().__init__(f"control socket {distrust.path}: {distrust.reason}")
        self.distrust = distrust


class SessionRefused(MuxError):
    """The master is alive, but the server would not open another session channel."""


def _u32(value: int) -> bytes:
    return struct.pack(">I", value)


def _string(data: bytes) -> bytes:
    return _u32(len(data)) + data


def _packet(*parts: bytes) -> bytes:
    body = b"".join(parts)
    return _u32(len(body)) + body


def _take_u32(body: bytes, offset: int) -> tuple[int, int]:
    if len(body) < offset + 4:
        raise MasterUnavailable("short packet from the master")
    return struct.unpack_from(">I", body, offset)[0], offset + 4


def _take_string(body: bytes, offset: int) -> tuple[str, int]:
    length, offset = _take_u32(body, offset)
    return body[offset : offset + length].decode(errors="replace"), offset + length


def socket_accepts(path: str) -> bool:
    """Whether a master of the user's listens at path (a connect, no protocol): ~20
    microseconds. Another account's socket is never connected to."""
    if socket_problem(path) is not None:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


class _Control:
    """One connection to a master's control socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.next_id = 1

    @classmethod
    async def open(cls, path: str) -> _Control:
        try:
            return await asyncio.wait_for(cls._open(path), HELLO_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise MasterUnavailable(
                f"the master at {path} did not answer within {HELLO_TIMEOUT_S:g} s", wedged=True
            ) from None

    @classmethod
    async def _open(cls, path: str) -> _Control:
        distrust = vouch(path)  # who owns it, and where it is: before any connect
        if distrust is not None:
            raise MasterUntrusted(distrust)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, path)
        except OSError as exc:
            sock.close()
            stale = exc.errno == errno.ECONNREFUSED
            raise MasterUnavailable(f"control socket {path}: {exc.strerror}", stale=stale) from None
        except BaseException:
            sock.close()
            raise
        distrust = peer_problem(sock, path)  # who is at the other end: before the first byte
        if distrust is not None:
            sock.close()
            raise MasterUntrusted(distrust)
        control = cls(sock)
        try:
            await control.send(_u32(MSG_HELLO), _u32(MUX_VERSION))
            try:
                body = await control.read()
            except EOFError:
                raise MasterUnavailable("the master closed the connection at HELLO") from None
            kind, offset = _take_u32(body, 0)
            version, _ = _take_u32(body, offset)
            if kind != MSG_HELLO or version != MUX_VERSION:
                raise MasterUnavailable(f"master speaks mux protocol {version}, not {MUX_VERSION}")
        except BaseException:
            control.close()
            raise
        return control

    def request_id(self) -> int:
        rid, self.next_id = self.next_id, self.next_id + 1
        return rid

    async def send(self, *parts: bytes) -> None:
        try:
            await self.loop.sock_sendall(self.sock, _packet(*parts))
        except OSError as exc:
            raise MasterUnavailable(f"master closed the control socket: {exc.strerror}") from None

    async def send_fd(self, fd: int) -> None:
        """One descriptor, with one byte, per message: what the master's mm_receive_fd reads."""
        while True:
            try:
                socket.send_fds(self.sock, [b"\0"], [fd])
                return
            except BlockingIOError:
                writable = self.loop.create_future()
                self.loop.add_writer(self.sock.fileno(), writable.set_result, None)
                try:
                    await writable
                finally:
                    self.loop.remove_writer(self.sock.fileno())
            except OSError as exc:
                raise MasterUnavailable(f"passing descriptors failed: {exc.strerror}") from None

    async def _exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            try:
                chunk = await self.loop.sock_recv(self.sock, count - len(data))
            except OSError:
                chunk = b""
            if not chunk:
                raise EOFError
            data += chunk
        return data

    async def read(self) -> bytes:
        """The next packet's body; EOFError when the master closed the connection."""
        (length,) = struct.unpack(">I", await self._exactly(4))
        if length > MAX_PACKET:
            raise MasterUnavailable(f"oversized packet ({length} bytes) from the master")
        return await self._exactly(length)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


async def _one_request(path: str, message: int, timeout: float) -> bytes | None:
    """One request on a fresh control connection: the reply's body, or None if the master
    hung up before answering."""

    async def ask() -> bytes | None:
        control = await _Control.open(path)
        try:
            await control.send(_u32(message), _u32(control.request_id()))
            try:
                return await control.read()
            except EOFError:
                return None
        finally:
            control.close()

    return await asyncio.wait_for(ask(), timeout)


async def alive_check(path: str, timeout: float = 2.0) -> int | None:
    """The master's pid, or None when no master answers at path."""
    try:
        body = await _one_request(path, C_ALIVE_CHECK, timeout)
        if body is None or _take_u32(body, 0)[0] != S_ALIVE:
            return None
        return _take_u32(body, 8)[0]  # after the type and the request id
    except (MuxError, asyncio.TimeoutError):
        return None


async def terminate(path: str, timeout: float = 2.0) -> bool:
    """Ask the master at path to exit (what ``ssh -O exit`` does)."""
    try:
        body = await _one_request(path, C_TERMINATE, timeout)
    except (MuxError, asyncio.TimeoutError):
        return False
    # The master may exit before its answer makes it out.
    return body is None or _take_u32(body, 0)[0] == S_OK


async def run_session(
    path: str,
    command: str,
    *,
    timeout: float,
    output_cap: int,
    on_stderr: Callable[[bytes], None] | None = None,
    on_start: OnStart | None = None,
    subsystem: bool = False,
) -> ProcessResult:
    """Run command in a new session of the master at path; like ``runner.run_process``.

    ``on_start(execution)`` receives a synchronous abort (close our side: the master then
    closes the session channel), and no pid: nothing runs locally. Ending the remote
    process group is the caller's job, as it is for the spawned-ssh path.
    """
    if not timeout > 0:
        raise ValueError("timeout must be positive")
    started = time.monotonic()
    session = _Session(path, command, output_cap, on_stderr, subsystem)
    task = asyncio.ensure_future(session.run(on_start))
    session.task = task
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        session.abort()
        await cancel_and_wait(task)
        with contextlib.suppress(BaseException):
            await asyncio.shield(session.finish())
        raise
    if not done:
        session.abort()
        await cancel_and_wait(task)
        await session.finish()
        raise ProcessTimeout(session.result(started), timeout)
    try:
        if not session.aborted:
            task.result()  # MasterUnavailable / SessionRefused propagate
    finally:
        await session.finish()
    return session.result(started)  # aborted: like a killed process, no exit status


class _Session:
    def __init__(
        self,
        path: str,
        command: str,
        cap: int,
        on_stderr: Callable[[bytes], None] | None,
        subsystem: bool,
    ) -> None:
        self.path, self.command, self.cap = path, command, cap
        self.on_stderr, self.subsystem = on_stderr, subsystem
        self.control: _Control | None = None
        self.collector: OutputCollector | None = None
        self.exit_code: int | None = None
        self.aborted = False
        self.task: asyncio.Future[None] | None = None

    def abort(self) -> None:
        """Synchronous: close our side (the master then closes the session) and stop
        waiting; a pending read on a closed socket would never wake up by itself."""
        self.aborted = True
        if self.control is not None:
            self.control.close()
        if self.task is not None:
            self.task.cancel()

    async def run(self, on_start: OnStart | None) -> None:
        self.control = await _Control.open(self.path)
        if self.aborted:  # aborted while connecting
            self.control.close()
            return
        if on_start is not None:
            on_start(Execution(self.abort, None))
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            await self.control.send(
                _u32(C_NEW_SESSION),
                _u32(self.control.request_id()),
                _string(b""),  # reserved
                _u32(0),  # want tty
                _u32(0),  # want X11 forwarding
                _u32(0),  # want agent forwarding
                _u32(1 if self.subsystem else 0),
                _u32(NO_ESCAPE_CHAR),
                _string(b""),  # terminal type
                _string(self.command.encode()),
            )
            for fd in (null, out_w, err_w):
                await self.control.send_fd(fd)
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            # The master holds its own copies now; ours must go, or the pipes never end.
            for fd in (null, out_w, err_w):
                os.close(fd)
        self.collector = OutputCollector(out_r, err_r, self.cap, self.on_stderr)
        try:
            body = await self.control.read()
        except EOFError:
            raise MasterUnavailable(
                "the master closed the connection instead of answering"
            ) from None
        kind, offset = _take_u32(body, 0)
        if kind != S_SESSION_OPENED:
            _, offset = _take_u32(body, offset)
            reason, _ = _take_string(body, offset) if offset < len(body) else ("", 0)
            if REFUSED_BY_PEER.lower() in reason.lower():
                raise SessionRefused(reason)
            raise MasterUnavailable(f"the master refused the session: {reason or hex(kind)}")
        await self._wait_for_exit()

    async def _wait_for_exit(self) -> None:
        assert self.control is not None and self.collector is not None
        while True:
            try:
                body = await self.control.read()
            except EOFError:
                break
            kind, offset = _take_u32(body, 0)
            if kind == S_EXIT_MESSAGE:
                _, offset = _take_u32(body, offset)  # session id
                self.exit_code, _ = _take_u32(body, offset)
            elif kind != S_TTY_ALLOC_FAIL:
                break

    async def finish(self) -> None:
        if self.control is not None:
            self.control.close()
        drain = ABORT_DRAIN_S if self.aborted else DRAIN_S
        if self.collector is not None and not await self.collector.drain(drain):
            await self.collector.stop()

    def result(self, started: float) -> ProcessResult:
        argv = ("ssh-mux", self.path, self.command)
        if self.collector is None:
            return ProcessResult(argv, None, "", "", False, False, 0, 0, time.monotonic() - started)
        return self.collector.result(argv, self.exit_code, started)
