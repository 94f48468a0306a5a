"""A private OpenSSH server on 127.0.0.1, as the sandbox's login node (or its bastion).

Started by absolute path, in its own session, under a small child subreaper: orphans
of its sessions are reaped at once, as a real login node's init does (the init of some
containers reaps only every second or so, and zombies keep a process group "alive").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..ssh.procs import process_table

SSHD = "/usr/sbin/sshd"
READY_TIMEOUT_S = 10.0

# Runs sshd as its child and reaps every orphan of sshd's sessions (PR_SET_CHILD_SUBREAPER).
SUBREAPER = r"""
import ctypes, os, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
child = os.fork()
if child == 0:
    os.execv(sys.argv[1], sys.argv[1:])
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
    except InterruptedError:
        continue
"""


class SandboxError(RuntimeError):
    pass


def sshd_available() -> bool:
    return os.path.exists(SSHD) and shutil.which("ssh") is not None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SshServer:
    """One sshd. ``name`` prefixes its files in ``ssh_dir`` (config, pid, log)."""

    name: str
    ssh_dir: Path
    user: str
    host_key: Path
    authorized_keys: Path
    env: dict[str, str] = field(default_factory=dict)  # SetEnv for sessions
    max_sessions: int = 10
    password: bool = False  # MFA stand-in: publickey, then a password
    port: int = 0
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.ssh_dir / f"{self.name}_config"

    @property
    def log(self) -> Path:
        return self.ssh_dir / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.ssh_dir / f"{self.name}.pid"

    def write_config(self) -> None:
        auth = (
            "PasswordAuthentication yes\nAuthenticationMethods publickey,password\n"
            if self.password
            else "PasswordAuthentication no\n"
        )
        set_env = " ".join(f"{k}={v}" for k, v in self.env.items())
        self.config_path.write_text(
            f"""Port {self.port}
ListenAddress 127.0.0.1
AddressFamily inet
HostKey {self.host_key}
PidFile {self.pid_file}
AuthorizedKeysFile {self.authorized_keys}
AllowUsers {self.user}
PubkeyAuthentication yes
{auth}KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PrintMotd no
PrintLastLog no
UseDNS no
X11Forwarding no
AllowTcpForwarding yes
MaxStartups 200
MaxSessions {self.max_sessions}
{"SetEnv " + set_env if set_env else ""}
LogLevel INFO
"""
        )

    def start(self) -> None:
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        for _ in range(5):
            self.port = self.port or free_port()
            self.write_config()
            check = subprocess.run([SSHD, "-t", "-f", str(self.config_path)], capture_output=True)
            if check.returncode != 0:
                raise SandboxError(f"sshd config rejected: {check.stderr.decode(errors='replace')}")
            with contextlib.suppress(OSError):
                self.pid_file.unlink()
            log = open(self.log, "ab")  # noqa: SIM115 - handed to the child
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-S",
                    "-c",
                    SUBREAPER,
                    SSHD,
                    "-D",
                    "-e",
                    "-f",
                    str(self.config_path),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
            log.close()
            if self._wait_ready():
                return
            self.stop()
            self.port = 0
        raise SandboxError(f"sshd did not start; see {self.log}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=2)
                break
            except subprocess.TimeoutExpired:
                continue

    @property
    def running(self) -> bool:
        return self._proc is not None

    @property
    def group(self) -> int:
        assert self._proc is not None, f"{self.name} is not running"
        return self._proc.pid

    @property
    def listener_pid(self) -> int:
        """The sshd that accepts connections (the subreaper's child)."""
        return int(self.pid_file.read_text().split()[0])

    def pause(self) -> None:
        """SIGSTOP everything: connections hang, for timeout tests."""
        os.killpg(self.group, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.group, signal.SIGCONT)

    def kill_sessions(self) -> int:
        """Kill this sshd's per-connection processes (not the listener): connections drop."""
        listener = self.listener_pid
        table = process_table()
        parents = {p.pid: p.ppid for p in table}

        def under_listener(pid: int) -> bool:
            while pid > 1:
                pid = parents.get(pid, 0)
                if pid == listener:
                    return True
            return False

        killed = 0
        for proc in table:
            if proc.name == "sshd" and proc.pid != listener and under_listener(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed += 1
        return killed

    def logins(self, method: str = "") -> int:
        """Completed logins so far, counted from the log (``method``: publickey, password)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return 0
        return text.count(f"Accepted {method}" if method else "Accepted ")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as s,
            ):
                if s.recv(64).startswith(b"SSH-2.0-") and self.pid_file.exists():
                    return True
            time.sleep(0.005)
        return False
