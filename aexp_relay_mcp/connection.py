"""Connection reuse: one SSH login per host per session, through OpenSSH's ControlMaster.

Rules (each one stops a hang or a pile of MFA prompts we have seen):

* **Op calls never become masters.** They run with ``-o ControlMaster=no`` and our
  ControlPath: over a live master they multiplex (~8 ms instead of ~230 ms); without one
  ssh simply connects directly.
* **Masters are started explicitly**, with ``ssh -fNM``, all three stdio streams on
  /dev/null and debug output in a file, so no pipe of ours is ever held by a process that
  outlives the call. Start-up is single-flight per host: eight concurrent first calls
  make one login, not eight.
* **Whose ControlPath.** When the user's ssh config sets one for the host (read with
  ``ssh -G``), it is used, so a master opened in a terminal (``aexp-relay-mcp connect``,
  or plain ssh) is reused. Otherwise ``~/.aexp/cm/%C`` in a 0700 directory.
* **A master that cannot start** (MFA, password) is not retried on every call: after a
  failure the host gets direct connections for ``MASTER_RETRY_S``, and errors tell the
  user to run ``aexp-relay-mcp connect`` once in a terminal.
* A per-host semaphore caps concurrent sessions below sshd's MaxSessions (default 10),
  above which multiplexed sessions silently fall back to fresh logins.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import RelayConfig
from .runner import kill_group

MASTER_RETRY_S = 60.0
MAX_SOCKET_PATH = 104 - 17  # ssh binds "<path>.<16 random chars>" first
MASTER_START_GRACE_S = 5.0
MUX_FAILURE_MARKERS = (
    "Control socket connect",
    "mux_client",
    "disabling multiplexing",
    "ControlSocket",
)


@dataclass(frozen=True)
class SharedConnection:
    """What the status check reports about reuse for a host."""

    enabled: bool
    control_path: str | None
    live: bool
    age_s: float | None
    owner: str  # "relay" (our ~/.aexp/cm) or "user" (their ssh config)


def ssh_base(config: RelayConfig) -> list[str]:
    argv = [config.ssh_bin]
    if config.ssh_config:
        argv += ["-F", config.ssh_config]
    return argv


class ConnectionManager:
    """Chooses ssh options per call so calls share one master per host."""

    def __init__(self, config: RelayConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.enabled = config.control_persist.lower() not in ("no", "0", "off", "false")
        self._paths: dict[str, tuple[str, str]] = {}  # host -> (path, owner)
        self._no_path: set[str] = set()  # hosts without a usable ControlPath: ask ssh -G once
        self._starting: dict[str, asyncio.Lock] = {}
        self._failed_until: dict[str, float] = {}
        self._sessions: dict[str, asyncio.Semaphore] = {}

    # ------------------------------------------------------------------ per call

    def session_slot(self, host: str) -> asyncio.Semaphore:
        return self._sessions.setdefault(host, asyncio.Semaphore(self.config.max_sessions))

    async def options_for(self, host: str) -> tuple[list[str], bool]:
        """ssh ``-o`` options for an op call, and whether it should be multiplexed."""
        if not self.enabled:
            return [], False
        path = await self.control_path(host)
        if path is None:
            return [], False
        options = [f"ControlPath={path}"]
        if os.path.exists(path):
            return options, True
        if self.clock() < self._failed_until.get(host, 0.0):
            return [], False
        if await self.ensure_master(host):
            return options, True
        # No master: connect directly, without a ControlPath that could only get in the way.
        return [], False

    def live_options(self, host: str) -> list[str]:
        """Without waiting: the ControlPath option when a master for host is already up."""
        known = self._paths.get(host)
        if self.enabled and known and os.path.exists(known[0]):
            return [f"ControlPath={known[0]}"]
        return []

    def note_result(self, host: str, stderr: str) -> None:
        """A call whose stderr shows the master failed: let the next call start a new one."""
        if any(marker in stderr for marker in MUX_FAILURE_MARKERS):
            path = self._paths.get(host, (None, ""))[0]
            if path and self._paths[host][1] == "relay":
                # A stale socket with no master behind it: remove it so a new one can start.
                with contextlib.suppress(OSError):
                    os.unlink(path)

    # ------------------------------------------------------------------ control path

    async def control_path(self, host: str) -> str | None:
        if host in self._paths:
            return self._paths[host][0]
        if host in self._no_path:
            return None
        theirs = await self._ssh_g(host, [])
        user_path = theirs.get("controlpath", "none")
        if user_path and user_path != "none":
            self._paths[host] = (user_path, "user")
            return user_path
        ours = await self._ssh_g(host, ["-o", f"ControlPath={self.config.control_dir}/%C"])
        path = ours.get("controlpath")
        if not path or path == "none" or len(path.encode()) > MAX_SOCKET_PATH:
            # Unix socket paths are limited (~104 bytes with ssh's temporary suffix).
            self._no_path.add(host)
            return None
        Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(Path(path).parent, 0o700)
        self._paths[host] = (path, "relay")
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

    async def ensure_master(self, host: str) -> bool:
        """Start a master for host unless one is live; one start at a time per host."""
        path = await self.control_path(host)
        if path is None:
            return False
        lock = self._starting.setdefault(host, asyncio.Lock())
        async with lock:
            if os.path.exists(path):
                return True
            if self.clock() < self._failed_until.get(host, 0.0):
                return False
            ok = await self._start_master(host, path)
            if not ok:
                self._failed_until[host] = self.clock() + MASTER_RETRY_S
            return ok

    def master_log(self, host: str) -> Path:
        path = self._paths.get(host, (f"{self.config.control_dir}/unknown", ""))[0]
        return Path(path + ".log")

    async def _start_master(self, host: str, path: str) -> bool:
        log = self.master_log(host)
        argv = [
            *ssh_base(self.config),
            "-fNM",
            "-o", f"ControlPath={path}",
            "-o", f"ControlPersist={self.config.control_persist}",
            "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={max(1, round(self.config.connect_timeout))}",
            "-o", "ServerAliveInterval=30",
            "-E", str(log),
            "--", host,
        ]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            code = await asyncio.wait_for(
                proc.wait(), self.config.connect_timeout + MASTER_START_GRACE_S
            )
        except asyncio.TimeoutError:
            kill_group(proc.pid, signal.SIGKILL)
            await proc.wait()
            return False
        except asyncio.CancelledError:
            kill_group(proc.pid, signal.SIGKILL)
            raise
        return code == 0 and os.path.exists(path)

    async def check(self, host: str) -> SharedConnection:
        if not self.enabled:
            return SharedConnection(False, None, False, None, "relay")
        path = await self.control_path(host)
        if path is None:
            return SharedConnection(True, None, False, None, "relay")
        owner = self._paths[host][1]
        live = False
        if os.path.exists(path):
            proc = await asyncio.create_subprocess_exec(
                *ssh_base(self.config), "-O", "check", "-o", f"ControlPath={path}", "--", host,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            try:
                live = await asyncio.wait_for(proc.wait(), 5) == 0
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        age = None
        if live:
            try:
                age = round(time.time() - os.stat(path).st_mtime, 1)
            except OSError:
                age = None
        return SharedConnection(True, path, live, age, owner)

    def exit_argv(self, host: str, path: str) -> list[str]:
        return [*ssh_base(self.config), "-O", "exit", "-o", f"ControlPath={path}", "--", host]

    def connect_argv(self, host: str, path: str) -> list[str]:
        """Interactive master: the terminal stays attached for password, MFA or Duo."""
        return [
            *ssh_base(self.config),
            "-fNM",
            "-o", f"ControlPath={path}",
            "-o", f"ControlPersist={self.config.control_persist}",
            "-o", "ServerAliveInterval=30",
            "--", host,
        ]  # fmt: skip
