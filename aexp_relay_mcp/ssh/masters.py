"""Shared ssh connections (ControlMasters): one login per host for every relay process on
this machine.

Rules (each one stops a hang or a pile of MFA prompts we have seen):

* **Calls never become masters.** Over a live master they open a session on it (natively,
  ``mux.py``, or through ``ssh -o ControlMaster=no``); without one they connect directly.
* **Masters start under a cross-process lock.** ``flock`` on a lock file in
  ``<control dir>/state``; with the lock held, the socket is checked again, so N servers
  whose first calls start together make one login, and no master loses a race. A master
  that finds its socket taken anyway (the user's own ssh got there first) is ended.
* **Masters are started explicitly**, with ``ssh -fNM``, stdio on /dev/null and debug
  output in a file, so no pipe of ours is held by a process that outlives the call.
* **Whose ControlPath.** When the user's ssh config sets one for the host (``ssh -G``),
  it is used, so a master opened in a terminal (``aexp-relay-mcp connect``, plain ssh) is
  reused. Otherwise ``~/.aexp/cm/%C`` in a 0700 directory. A user's ControlPath the relay
  cannot vouch for (``trust``: another account's socket, a directory others can write) is
  passed over for the relay's own, with a warning; it is never used, never removed.
* **A dead master is noticed on the next call**: liveness is a connect to its socket,
  not the file's existence. A stale socket is removed and a new master started.
* **A master that cannot start** because the login needs a human (password, MFA) fails
  the call at once with the ``connect`` hint, and is not retried for ``MASTER_RETRY_S``.
* **Sessions are counted across processes.** sshd's MaxSessions (default 10) counts
  every session on one connection; each session holds one of ``max_sessions`` lock-file
  slots per master, so three servers sharing a master never ask for 24.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..model.config import RelayConfig
from ..model.errors import Failure, RelayDownError, RelayTimeoutError
from ..model.text import tail
from . import mux
from .argv import ssh_base
from .failures import classify_ssh_failure
from .procs import process_table
from .runner import kill_group
from .trust import (
    Distrust,
    shared_directory,
    socket_problem,
    user_uid,
    vouch,
    vouch_for_handoff,
)

log = logging.getLogger("aexp_relay_mcp.ssh")

MASTER_RETRY_S = 60.0
MAX_SOCKET_PATH = 104 - 17  # ssh binds "<path>.<16 random chars>" first
MASTER_START_GRACE_S = 5.0
LOCK_POLL_S = 0.02
SLOT_POLL_S = 0.005
MASTER_LOGS_KEPT = 3
# ssh's own words for "this login needs a human": no master can start in BatchMode.
NEEDS_A_HUMAN = ("auth_failed", "host_key_unknown", "host_key_changed")
MUX_FAILURE_MARKERS = (
    "Control socket connect",
    "mux_client",
    "muxclient",
    "disabling multiplexing",
    "ControlSocket",
)
CONNECT_HINT = (
    "If this host needs a password, MFA or Duo, run `aexp-relay-mcp connect {host}` once in "
    "a terminal: every call then reuses that login."
)


@dataclass(frozen=True)
class Route:
    """How a call reaches the host: through the master at ``control_path``, or directly.
    ``passed_over``: the user's ControlPath, when it could not be vouched for."""

    control_path: str | None
    owner: str = "relay"  # relay (our ~/.aexp/cm) or user (their ssh config)
    passed_over: Distrust | None = None

    @property
    def multiplexed(self) -> bool:
        return self.control_path is not None


@dataclass(frozen=True)
class SharedConnection:
    """What the status check reports about reuse for a host."""

    enabled: bool
    control_path: str | None
    live: bool
    age_s: float | None
    owner: str
    master_pid: int | None = None
    passed_over: Distrust | None = None
    shared_directory: str | None = None  # the user's ControlPath's, when others can write it


@dataclass(frozen=True)
class _Failed:
    until: float
    error: RelayDownError | None  # set: fail calls fast with it (the login needs a human)


class ConnectionManager:
    """Chooses, per call, the master to share, and starts masters when needed."""

    def __init__(self, config: RelayConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.enabled = config.control_persist.lower() not in ("no", "0", "off", "false")
        self._paths: dict[str, tuple[str, str]] = {}  # host -> (path, owner)
        self._own: dict[str, str] = {}  # host -> the relay's own path for it
        self._distrusted: dict[str, Distrust] = {}  # path -> why it is never used
        self._used: dict[str, str] = {}  # host -> the path its calls last went through
        self._no_path: set[str] = set()  # hosts without a usable ControlPath: ask ssh -G once
        self._starting: dict[str, asyncio.Lock] = {}
        self._resolving: dict[str, asyncio.Lock] = {}
        self._failed: dict[str, _Failed] = {}
        self._slot_fds: dict[tuple[str, int], int] = {}
        self._slots_held: set[tuple[str, int]] = set()
        self._shells: dict[str, str | None] = {}  # host -> the account's login shell

    # ------------------------------------------------------------------ the login shell

    def remember_login_shell(self, host: str, shell: str) -> None:
        """What a command that started on host said its login shell is, kept across
        processes and restarts: a later failure to start names it (see ``login_shell``)."""
        if self.login_shell(host) == shell:
            return
        self._shells[host] = shell
        with contextlib.suppress(OSError):
            self._shell_file(host).write_text(shell + "\n")

    def login_shell(self, host: str) -> str | None:
        """The account's login shell on host, as the last command that started said."""
        if host not in self._shells:
            try:
                text = self._shell_file(host).read_text().strip()
            except OSError:
                text = ""
            self._shells[host] = text or None
        return self._shells[host]

    def _shell_file(self, host: str) -> Path:
        return self.state_dir() / f"{self.key(host)}.shell"

    # ------------------------------------------------------------------ per call

    async def route(self, host: str, deadline: float) -> Route:
        """The master to use for host, starting one (once, across processes) if needed.

        Raises RelayDownError when the master cannot start because the login needs a
        human, and RelayTimeoutError when starting it runs past the call's deadline.
        """
        if not self.enabled:
            return Route(None)
        path, owner, passed_over = await self.safe_path(host)
        if path is None:
            return Route(None, passed_over=passed_over)
        self._used[host] = path
        if mux.socket_accepts(path):
            return Route(path, owner, passed_over)
        failed = self._failed.get(host)
        if failed is not None and self.clock() < failed.until:
            if failed.error is not None:
                raise failed.error
            return Route(None, passed_over=passed_over)
        started = await self._ensure_master(host, path, deadline)
        return Route(path if started else None, owner, passed_over)

    async def safe_path(self, host: str) -> tuple[str | None, str, Distrust | None]:
        """The ControlPath calls to host may use, whose it is, and the user's own when it
        was passed over (another account's socket, a directory others can write to)."""
        path = await self.control_path(host)
        if path is None:
            return None, "relay", None
        owner = self._paths[host][1]
        if owner != "user":
            return path, owner, None
        distrust = self._distrusted.get(path) or vouch(path)
        if distrust is None:
            return path, owner, None
        if path not in self._distrusted:  # results and status say it; the log once
            log.info("%s", distrust.warning(host, None))
        self._distrusted[path] = distrust
        return await self.own_path(host), "relay", distrust

    def distrust(self, distrust: Distrust) -> None:
        """A socket found out at connect time (its peer, a race): never used again."""
        self._distrusted[distrust.path] = distrust

    def state_dir(self) -> Path:
        directory = Path(self.config.control_dir).expanduser() / "state"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return directory

    @staticmethod
    def key(path: str) -> str:
        return hashlib.sha256(path.encode()).hexdigest()[:16]

    @contextlib.asynccontextmanager
    async def session_slot(self, path: str, deadline: float) -> AsyncIterator[None]:
        """Hold one of ``max_sessions`` slots of the master at path, across processes.

        An ``flock`` per slot file: the kernel drops it if the process dies, so a killed
        server never leaks a slot. Raises RelayTimeoutError if none frees up in time.
        """
        key = self.key(path)
        while True:
            for index in range(max(1, self.config.max_sessions)):
                slot = (key, index)
                if slot in self._slots_held:
                    continue
                fd = self._slot_fd(slot)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                self._slots_held.add(slot)
                try:
                    yield
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    self._slots_held.discard(slot)
                return
            if self.clock() >= deadline:
                raise RelayTimeoutError(
                    f"All {self.config.max_sessions} sessions of the shared connection stayed "
                    "busy until the call's timeout.",
                    hint="Other relay calls to this host are still running; retry, or raise "
                    "AEXP_RELAY_MAX_SESSIONS (keep it below sshd's MaxSessions, 10).",
                )
            await asyncio.sleep(SLOT_POLL_S)

    def _slot_fd(self, slot: tuple[str, int]) -> int:
        fd = self._slot_fds.get(slot)
        if fd is None:
            name = self.state_dir() / f"{slot[0]}.slot{slot[1]}"
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._slot_fds[slot] = fd
        return fd

    def live_path(self, host: str) -> str | None:
        """Without waiting: the socket of a live master for host that a spawned ssh may be
        handed, if there is one."""
        path = self._used.get(host)
        if self.enabled and path and vouch_for_handoff(path) is None and mux.socket_accepts(path):
            return path
        return None

    def forget(self, path: str) -> None:
        """A socket of ours with no master behind it: remove it so the next call starts a
        new one. Anyone else's is left alone."""
        if socket_problem(path) is None and not mux.socket_accepts(path):
            with contextlib.suppress(OSError):
                if Path(path).is_socket():
                    os.unlink(path)

    def note_result(self, path: str | None, stderr: str) -> None:
        """A spawned call whose stderr shows the master failed."""
        if path and any(marker in stderr for marker in MUX_FAILURE_MARKERS):
            self.forget(path)

    # ------------------------------------------------------------------ control path

    async def control_path(self, host: str) -> str | None:
        """The user's ControlPath for host (their ssh config), else the relay's own. Asked
        of ``ssh -G`` once per host, however many calls ask at once."""
        async with self._resolving.setdefault(host, asyncio.Lock()):
            return await self._control_path(host)

    async def _control_path(self, host: str) -> str | None:
        if host in self._paths:
            return self._paths[host][0]
        if host in self._no_path:
            return None
        theirs = await self._ssh_g(host, [])
        user_path = theirs.get("controlpath", "none")
        if user_path and user_path != "none":
            self._paths[host] = (user_path, "user")
            return user_path
        path = await self.own_path(host)
        if path is not None:
            self._paths[host] = (path, "relay")
        return path

    async def own_path(self, host: str) -> str | None:
        """The relay's own ControlPath for host: ``<control dir>/%C``, in a 0700 directory."""
        if host in self._own:
            return self._own[host]
        if host in self._no_path:
            return None
        ours = await self._ssh_g(host, ["-o", f"ControlPath={self.config.control_dir}/%C"])
        path = ours.get("controlpath")
        if not path or path == "none" or len(path.encode()) > MAX_SOCKET_PATH:
            # Unix socket paths are limited (~104 bytes with ssh's temporary suffix).
            self._no_path.add(host)
            return None
        Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(Path(path).parent, 0o700)
        self._own[host] = path
        return path

    async def _ssh_g(self, host: str, extra: Sequence[str]) -> dict[str, str]:
        proc = await asyncio.create_subprocess_exec(
            *ssh_base(self.config),
            "-G",
            *extra,
            "--",
            host,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 10)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            return {}
        values: dict[str, str] = {}
        for line in out.decode(errors="replace").splitlines():
            key, _, value = line.partition(" ")
            values.setdefault(key.lower(), value)
        return values

    # ------------------------------------------------------------------ masters

    async def _ensure_master(self, host: str, path: str, deadline: float) -> bool:
        """Start a master for host unless one is live: once per host, across processes."""
        lock = self._starting.setdefault(host, asyncio.Lock())
        async with lock, self._file_lock(host, path, deadline):
            if mux.socket_accepts(path):
                return True
            self.forget(path)
            try:
                await self._start_master(host, path, deadline)
            except RelayDownError as exc:
                if exc.kind in NEEDS_A_HUMAN:
                    self._failed[host] = _Failed(self.clock() + MASTER_RETRY_S, exc)
                    raise
                # The network or the path: a direct connection reports it in its own words.
                self._failed[host] = _Failed(self.clock() + MASTER_RETRY_S, None)
                return False
            return True

    @contextlib.asynccontextmanager
    async def _file_lock(self, host: str, path: str, deadline: float) -> AsyncIterator[None]:
        name = self.state_dir() / f"{self.key(path)}.lock"
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if self.clock() >= deadline:
                        raise master_start_timeout(host) from None
                    await asyncio.sleep(LOCK_POLL_S)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def _new_master_log(self, path: str) -> Path:
        key = self.key(path)
        logs = sorted(self.state_dir().glob(f"master-{key}-*.log"), key=_mtime)
        for old in logs[: max(0, len(logs) - MASTER_LOGS_KEPT + 1)]:
            with contextlib.suppress(OSError):
                old.unlink()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return self.state_dir() / f"master-{key}-{stamp}-{secrets.token_hex(3)}.log"

    def master_argv(self, host: str, path: str, log: Path) -> list[str]:
        verbose = ["-vv"] if self.config.ssh_verbose else []
        return [
            *ssh_base(self.config),
            "-fNM",
            "-o", f"ControlPath={path}",
            "-o", f"ControlPersist={self.config.control_persist}",
            "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={max(1, round(self.config.connect_timeout))}",
            "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=3",
            "-E", str(log), *verbose,
            "--", host,
        ]  # fmt: skip

    async def _start_master(self, host: str, path: str, deadline: float) -> None:
        """``ssh -fNM``; raises RelayDownError (classified from its log) if it fails."""
        log = self._new_master_log(path)
        proc = await asyncio.create_subprocess_exec(
            *self.master_argv(host, path, log),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        limit = min(
            self.config.connect_timeout + MASTER_START_GRACE_S, max(0.0, deadline - self.clock())
        )
        try:
            code = await asyncio.wait_for(proc.wait(), limit)
        except asyncio.TimeoutError:
            kill_group(proc.pid, signal.SIGKILL)
            await proc.wait()
            if self.clock() >= deadline:
                raise master_start_timeout(host) from None
            code = None
        except asyncio.CancelledError:
            kill_group(proc.pid, signal.SIGKILL)
            raise
        text = _read(log)
        if "disabling multiplexing" in text:
            # Someone else's master took the socket between our check and our bind: ours
            # would stay logged in, useless. End it.
            for pid in self._processes_with(str(log)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            if mux.socket_accepts(path):
                return
        if code == 0 and mux.socket_accepts(path):
            return
        failure = (
            classify_ssh_failure(text)
            if code is not None
            else Failure(
                "connection_timeout",
                "Starting the shared ssh connection did not finish in time.",
                "Check the network path (VPN, ProxyJump) and AEXP_RELAY_CONNECT_TIMEOUT.",
            )
        )
        raise RelayDownError(
            f"{failure.message} (while opening the shared connection to {host})",
            kind=failure.kind,
            hint=master_hint(failure, host),
            exit_code=code,
            stderr_tail=tail(text),
            details={"master_log": str(log)},
        )

    def relay_masters(self, path: str) -> list[int]:
        """Masters this relay started for path that are still running, whatever became of
        their socket (including ones that lost a race before the lock existed)."""
        return self._processes_with(f"ControlPath={path}", "-fNM")

    @staticmethod
    def _processes_with(*needles: str) -> list[int]:
        """The user's own ssh processes whose arguments include every needle."""
        found = []
        for proc in process_table():
            if proc.state == "Z" or not proc.argv or not proc.argv[0].endswith(b"ssh"):
                continue
            if proc.uid != user_uid():
                continue  # another account's, whatever its arguments say
            args = [a.decode(errors="replace") for a in proc.argv]
            if all(needle in args for needle in needles):
                found.append(proc.pid)
        return found

    async def check(self, host: str) -> SharedConnection:
        if not self.enabled:
            return SharedConnection(False, None, False, None, "relay")
        path, owner, passed_over = await self.safe_path(host)
        user_path = self._paths.get(host, ("", ""))
        shared = shared_directory(user_path[0]) if user_path[1] == "user" else None
        if path is None:
            return SharedConnection(True, None, False, None, "relay", None, passed_over, shared)
        pid = await mux.alive_check(path)
        age = None
        if pid is not None:
            with contextlib.suppress(OSError):
                age = round(time.time() - os.stat(path).st_mtime, 1)
        return SharedConnection(True, path, pid is not None, age, owner, pid, passed_over, shared)

    async def disconnect(self, host: str) -> int:
        """End the master at host's ControlPath and every master the relay started for it.
        Returns how many ended. A socket that is not the user's is left alone."""
        path, _, _ = await self.safe_path(host)
        if path is None:
            return 0
        ended = 0
        pid = await mux.alive_check(path)
        if pid is not None and await mux.terminate(path):
            ended += 1
        for other in self.relay_masters(path):
            if other == pid:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(other, signal.SIGTERM)
                ended += 1
        self.forget(path)
        return ended

    def connect_argv(self, host: str, path: str) -> list[str]:
        """Interactive master: the terminal stays attached for password, MFA or Duo.

        It persists for ``connect_persist`` (12 h by default) or until ``disconnect``:
        the user asked for this login, and on an MFA cluster each new one costs a prompt.
        """
        return [
            *ssh_base(self.config),
            "-fNM",
            "-o", f"ControlPath={path}",
            "-o", f"ControlPersist={self.config.connect_persist}",
            # Prompts are the point here, even where the ssh config says BatchMode.
            "-o", "BatchMode=no",
            "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=3",
            "--", host,
        ]  # fmt: skip


def master_hint(failure: Failure, host: str) -> str:
    """What to do when the shared connection could not start: the failure's own hint, and
    the way to log in by hand (unless that hint says it already)."""
    hint = failure.hint.replace("{host}", host)
    if "aexp-relay-mcp connect" in hint:
        return hint.replace("aexp-relay-mcp connect`", f"aexp-relay-mcp connect {host}`")
    return f"{hint} {CONNECT_HINT.format(host=host)}"


def master_start_timeout(host: str) -> RelayTimeoutError:
    """Starting the shared connection ran past the call's deadline."""
    return RelayTimeoutError(
        f"Could not connect to {host} within the call's timeout (starting the shared "
        "ssh connection hung: a ProxyCommand/ProxyJump, the network, or a login prompt).",
        hint="Check the host with plain ssh in a terminal; for MFA clusters run "
        "`aexp-relay-mcp connect` once. Set AEXP_RELAY_CONTROL_PERSIST=no to connect directly.",
    )


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
