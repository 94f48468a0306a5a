"""A built-in sandbox: a private OpenSSH server on 127.0.0.1 plus the repos an op needs.

Used by ``--selftest``, the test suite, the benchmarks and ``aexp-relay-mcp sandbox``.

Layout (``<root>`` is a short ``mkdtemp`` path, so ControlPath sockets fit)::

    <root>/ssh/       host and client keys, sshd_config, ssh_config, known_hosts, sshd.log
    <root>/remote/    owned by the login user
        origin.git    bare "GitHub"
        cluster/      the checkout on the login node (with wandb/offline-run-*)
        other/        a second clone: "someone else pushed"
        bin/wandb     stub wandb that records its argv in wandb-calls.log

When run as root, the sandbox logs in a dedicated user with an empty home
(``aexp-sbx``), so no rc file of root's slows or changes remote commands.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from .config import RelayConfig

SSHD = "/usr/sbin/sshd"
SANDBOX_USER = "aexp-sbx"
HOST_ALIAS = "aexp-sandbox"
# Test aliases: one whose ProxyCommand hangs, one with a wrong known host key,
# one with a key the server does not accept, one that nothing listens on.
HANG_ALIAS = "aexp-sandbox-hang"
BADKEY_ALIAS = "aexp-sandbox-badhostkey"
UNKNOWNKEY_ALIAS = "aexp-sandbox-unknownhostkey"
NOAUTH_ALIAS = "aexp-sandbox-noauth"
CLOSED_ALIAS = "aexp-sandbox-closed"

WANDB_STUB = """#!/bin/sh
# Stub wandb for the aexp sandbox: records its argv, marks synced runs.
printf '%s\\n' "$*" >> "{log}"
[ "$1" = sync ] || exit 0
shift
for d in "$@"; do
  case "$d" in -*) continue ;; esac
  [ -d "$d" ] || {{ echo "wandb: no such run directory: $d" >&2; exit 1; }}
  id=${{d##*-}}
  : > "$d/run-$id.wandb.synced"
  echo "Syncing: $d ... done."
done
"""


# Used only when sshd is missing, and always labelled: NOT ssh. It drops ssh's
# options and the host, then runs the remote command with the local sh.
SSH_STANDIN = """#!/bin/sh
# aexp sandbox LOCAL STAND-IN for ssh (no sshd installed): runs the command locally.
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; break ;;
    -o|-F|-E|-p|-i|-l|-J) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
shift
exec sh -c "$1"
"""


class SandboxError(RuntimeError):
    pass


def sshd_available() -> bool:
    return os.path.exists(SSHD) and shutil.which("ssh") is not None


@dataclass(frozen=True)
class LoginUser:
    name: str
    uid: int
    gid: int
    home: str


def _current_user() -> LoginUser:
    pw = pwd.getpwuid(os.geteuid())
    return LoginUser(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


def _login_user() -> LoginUser:
    if os.geteuid() != 0:
        return _current_user()
    try:
        pw = pwd.getpwnam(SANDBOX_USER)
    except KeyError:
        home = f"/var/lib/{SANDBOX_USER}"
        subprocess.run(
            ["useradd", "--system", "--create-home", "--home-dir", home, "--shell", "/bin/bash",
             SANDBOX_USER],
            check=True,
            capture_output=True,
        )  # fmt: skip
        # sshd without PAM refuses a locked account ("!"); "*" has no password but is open.
        subprocess.run(["usermod", "-p", "*", SANDBOX_USER], check=True, capture_output=True)
        pw = pwd.getpwnam(SANDBOX_USER)
    return LoginUser(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


@dataclass(frozen=True)
class ProcInfo:
    """One live process as /proc shows it."""

    pid: int
    ppid: int
    name: str
    state: str  # "Z" for a zombie
    argv: tuple[bytes, ...]

    @property
    def cmdline(self) -> str:
        return b" ".join(self.argv).decode(errors="replace")


def process_table() -> list[ProcInfo]:
    """Every process visible in /proc; the one place the sandbox and tests read it."""
    table = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        name, rest = stat.split("(", 1)[1].rsplit(")", 1)
        fields = rest.split()
        table.append(
            ProcInfo(
                pid=int(entry.name),
                ppid=int(fields[1]),
                name=name,
                state=fields[0],
                argv=tuple(a for a in argv.split(b"\0") if a),
            )
        )
    return table


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sandbox:
    """Start with ``with Sandbox() as sb:``; everything it started stops on exit."""

    def __init__(self, *, max_sessions: int = 10, runs: int = 3, standin: bool = False) -> None:
        """``standin=True``: no sshd; ops go through a local stand-in for ssh (labelled so)."""
        self.standin = standin
        self.max_sessions = max_sessions
        self.n_runs = runs
        self.root = Path(tempfile.mkdtemp(prefix="aexp-", dir="/tmp"))
        self.ssh_dir = self.root / "ssh"
        self.remote_dir = self.root / "remote"
        self.origin = self.remote_dir / "origin.git"
        self.cluster = self.remote_dir / "cluster"
        self.other = self.remote_dir / "other"
        self.bin_dir = self.remote_dir / "bin"
        self.wandb = self.bin_dir / "wandb"
        self.wandb_log = self.remote_dir / "wandb-calls.log"
        self.audit_log = self.root / "audit.log"
        self.ssh_config = self.ssh_dir / "ssh_config"
        self.sshd_log = self.ssh_dir / "sshd.log"
        self.ssh_bin = "ssh"
        self.user = _current_user() if standin else _login_user()
        self.port = 0
        self.remote_path = f"{self.bin_dir}:/usr/local/bin:/usr/bin:/bin"
        self._sshd: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Sandbox:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        if self.standin:
            self.ssh_dir.mkdir()
            self.remote_dir.mkdir()
            standin = self.ssh_dir / "ssh-standin"
            standin.write_text(SSH_STANDIN)
            standin.chmod(0o755)
            self.ssh_bin = str(standin)
            self.ssh_config.write_text("# no sshd: local stand-in\n")
            self._repos()
            return
        if not sshd_available():
            raise SandboxError(
                f"OpenSSH server not found at {SSHD}. Install it: "
                "sudo apt-get install -y openssh-server (Debian/Ubuntu), "
                "sudo dnf install -y openssh-server (Fedora/RHEL)."
            )
        self.ssh_dir.mkdir()
        os.chmod(self.ssh_dir, 0o711)  # sshd reads authorized_keys as the login user
        self.remote_dir.mkdir()
        os.chmod(self.root, 0o711)
        self._keys()
        self._repos()
        self.start_sshd()

    def close(self) -> None:
        self.stop_masters()
        self.stop_sshd()
        shutil.rmtree(self.root, ignore_errors=True)

    def processes(self, *, masters: bool) -> list[int]:
        """Local ssh processes pointed at this sandbox: shared-connection masters, or calls."""
        needle = str(self.root).encode()
        return [
            p.pid
            for p in process_table()
            if p.state != "Z"
            and p.argv
            and p.argv[0].endswith(b"ssh")
            and any(needle in a for a in p.argv)
            and (b"-fNM" in p.argv) == masters
        ]

    def stop_masters(self) -> None:
        for pid in self.processes(masters=True):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def start_sshd(self) -> None:
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        for _ in range(5):
            self.port = self.port or _free_port()
            self._write_configs()
            check = subprocess.run(
                [SSHD, "-t", "-f", str(self.ssh_dir / "sshd_config")], capture_output=True
            )
            if check.returncode != 0:
                raise SandboxError(f"sshd config rejected: {check.stderr.decode(errors='replace')}")
            log = open(self.sshd_log, "ab")  # noqa: SIM115 - handed to the child
            self._sshd = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.ssh_dir / "sshd_config")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
            log.close()
            if self._wait_ready():
                return
            self.stop_sshd()
            self.port = 0
        raise SandboxError(f"sshd did not start; see {self.sshd_log}")

    def stop_sshd(self) -> None:
        proc, self._sshd = self._sshd, None
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

    def set_remote_path(self, *dirs: str) -> None:
        """Restart sshd with another PATH for remote commands (e.g. one without git)."""
        self.remote_path = ":".join(dirs)
        self.stop_masters()
        self.stop_sshd()
        self.start_sshd()

    def kill_sessions(self) -> int:
        """Kill this sshd's per-connection processes (not the listener): connections drop."""
        assert self._sshd is not None
        table = process_table()
        parents = {p.pid: p.ppid for p in table}
        names = {p.pid: p.name for p in table}
        listener = self._sshd.pid

        def under_listener(pid: int) -> bool:
            while pid > 1:
                pid = parents.get(pid, 0)
                if pid == listener:
                    return True
            return False

        killed = 0
        for pid, name in names.items():
            if name == "sshd" and pid != listener and under_listener(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
        return killed

    def pause_sshd(self) -> None:
        """SIGSTOP the server: connections hang, for timeout tests."""
        assert self._sshd is not None
        os.killpg(self._sshd.pid, signal.SIGSTOP)

    def resume_sshd(self) -> None:
        assert self._sshd is not None
        os.killpg(self._sshd.pid, signal.SIGCONT)

    @property
    def sshd_pid(self) -> int | None:
        return self._sshd.pid if self._sshd else None

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self._sshd is not None
            if self._sshd.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as s,
            ):
                if s.recv(64).startswith(b"SSH-2.0-"):
                    return True
            time.sleep(0.005)
        return False

    # ------------------------------------------------------------------ setup

    def _keys(self) -> None:
        for name in ("host_ed25519", "client_ed25519", "other_host_ed25519", "stranger_ed25519"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "aexp-sandbox",
                 "-f", str(self.ssh_dir / name)],
                check=True,
            )  # fmt: skip
        shutil.copy(self.ssh_dir / "client_ed25519.pub", self.ssh_dir / "authorized_keys")
        os.chmod(self.ssh_dir / "authorized_keys", 0o644)

    def _write_configs(self) -> None:
        d = self.ssh_dir
        (d / "sshd_config").write_text(
            f"""Port {self.port}
ListenAddress 127.0.0.1
AddressFamily inet
HostKey {d}/host_ed25519
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
AllowUsers {self.user.name}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PrintMotd no
PrintLastLog no
UseDNS no
X11Forwarding no
MaxStartups 200
MaxSessions {self.max_sessions}
SetEnv PATH={self.remote_path}
LogLevel INFO
"""
        )
        host_key = (d / "host_ed25519.pub").read_text().split()[:2]
        other_key = (d / "other_host_ed25519.pub").read_text().split()[:2]
        (d / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {' '.join(host_key)}\n")
        (d / "known_hosts.bad").write_text(f"[127.0.0.1]:{self.port} {' '.join(other_key)}\n")
        (d / "known_hosts.empty").write_text("")

        def block(alias: str, *, known: str = "known_hosts", key: str = "client_ed25519",
                  port: int | None = None, extra: str = "") -> str:  # fmt: skip
            return f"""Host {alias}
    HostName 127.0.0.1
    Port {port or self.port}
    User {self.user.name}
    IdentityFile {d}/{key}
    IdentitiesOnly yes
    IdentityAgent none
    UserKnownHostsFile {d}/{known}
{extra}
"""

        (d / "ssh_config").write_text(
            block(HOST_ALIAS)
            + block(HANG_ALIAS, extra="    ProxyCommand sleep 600")
            + block(BADKEY_ALIAS, known="known_hosts.bad")
            + block(UNKNOWNKEY_ALIAS, known="known_hosts.empty")
            + block(NOAUTH_ALIAS, key="stranger_ed25519")
            + block(CLOSED_ALIAS, port=_free_port())
            + """Host *
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    CheckHostIP no
    UpdateHostKeys no
    BatchMode yes
    ConnectTimeout 5
    LogLevel ERROR
"""
        )

    def _repos(self) -> None:
        self.bin_dir.mkdir()
        self.wandb.write_text(WANDB_STUB.format(log=self.wandb_log))
        self.wandb.chmod(0o755)
        self._chown(self.remote_dir)
        self.git(self.remote_dir, "init", "-q", "--bare", "-b", "main", str(self.origin))
        seed = self.remote_dir / "seed"
        self.git(self.remote_dir, "init", "-q", "-b", "main", str(seed))
        self.write(seed / "README.md", "# experiment\n")
        self.write(seed / "train.py", "print('train')\n")
        self.write(seed / ".gitignore", "wandb/\n")
        self.git(seed, "add", "-A")
        self.git(seed, "commit", "-q", "-m", "initial commit")
        self.write(seed / "train.py", "print('train v2')\n")
        self.git(seed, "commit", "-q", "-am", "second commit")
        self.git(seed, "push", "-q", str(self.origin), "main")
        shutil.rmtree(seed)
        for clone in (self.cluster, self.other):
            self.git(self.remote_dir, "clone", "-q", str(self.origin), str(clone))
            self.git(clone, "config", "user.name", "Sandbox User")
            self.git(clone, "config", "user.email", "sandbox@example.invalid")
        for i in range(self.n_runs):
            run = self.cluster / "wandb" / f"offline-run-20260101_12000{i}-run{i}"
            run.mkdir(parents=True)
            self.write(run / f"run-run{i}.wandb", "x" * (4096 * (i + 1)))
            if i == self.n_runs - 1:
                self.write(run / f"run-run{i}.wandb.synced", "")
        self._chown(self.remote_dir)

    # ------------------------------------------------------------------ helpers

    def _chown(self, path: Path) -> None:
        if os.geteuid() != 0 or self.user.uid == os.geteuid():
            return
        for dirpath, dirnames, filenames in os.walk(path):
            os.chown(dirpath, self.user.uid, self.user.gid)
            for name in dirnames + filenames:
                os.lchown(os.path.join(dirpath, name), self.user.uid, self.user.gid)

    def write(self, path: Path, text: str) -> None:
        path.write_text(text)
        if os.geteuid() == 0 and self.user.uid != 0:
            os.chown(path, self.user.uid, self.user.gid)

    def git_env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.user.home,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": "Sandbox User",
            "GIT_AUTHOR_EMAIL": "sandbox@example.invalid",
            "GIT_COMMITTER_NAME": "Sandbox User",
            "GIT_COMMITTER_EMAIL": "sandbox@example.invalid",
            "LC_ALL": "C",
        }

    def git(self, cwd: Path, *args: str, check: bool = True) -> str:
        """Run git in cwd as the login user (so files keep the right owner)."""
        as_user = os.geteuid() == 0 and self.user.uid != 0
        proc = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=self.git_env(),
            capture_output=True,
            user=self.user.uid if as_user else None,
            group=self.user.gid if as_user else None,
            extra_groups=[] if as_user else None,
        )
        if check and proc.returncode != 0:
            raise SandboxError(
                f"git {' '.join(args)} in {cwd} failed: {proc.stderr.decode(errors='replace')}"
            )
        return proc.stdout.decode(errors="replace")

    def commit(self, clone: Path, path: str, text: str, message: str) -> str:
        self.write(clone / path, text)
        self.git(clone, "add", "--", path)
        self.git(clone, "commit", "-q", "-m", message)
        return self.git(clone, "rev-parse", "HEAD").strip()

    def push_from_other(self, path: str = "upstream.txt", text: str = "upstream\n") -> str:
        """Someone else (up to date with origin) pushes a commit to origin/main."""
        self.git(self.other, "pull", "-q", "--ff-only", "origin", "main")
        sha = self.commit(self.other, path, text, f"upstream change to {path}")
        self.git(self.other, "push", "-q", "origin", "main")
        return sha

    def head(self, repo: Path) -> str:
        return self.git(repo, "rev-parse", "HEAD").strip()

    def origin_refs(self) -> dict[str, str]:
        out = self.git(self.origin, "for-each-ref", "--format=%(objectname) %(refname)")
        return {ref: sha for sha, ref in (line.split(" ", 1) for line in out.splitlines())}

    def logins(self) -> int:
        """SSH authentications so far, counted from the sshd log."""
        try:
            return self.sshd_log.read_text(errors="replace").count("Accepted publickey for")
        except OSError:
            return 0

    def config(self, **overrides: object) -> RelayConfig:
        base = RelayConfig(
            ssh_host=HOST_ALIAS,
            remote_repo=str(self.cluster),
            ssh_config=str(self.ssh_config),
            wandb=str(self.wandb),
            audit_log=self.audit_log,
            connect_timeout=5,
            verbose_log_dir=self.root / "ssh-logs",
            ssh_bin=self.ssh_bin,
            control_dir=str(self.root / "cm"),
        )
        return base.replace(**overrides)

    def env(self) -> dict[str, str]:
        """The AEXP_RELAY_* variables that point the CLI or MCP server at the sandbox."""
        return {
            "AEXP_RELAY_SSH_HOST": HOST_ALIAS,
            "AEXP_RELAY_REMOTE_REPO": str(self.cluster),
            "AEXP_RELAY_SSH_CONFIG": str(self.ssh_config),
            "AEXP_RELAY_WANDB": str(self.wandb),
            "AEXP_RELAY_AUDIT_LOG": str(self.audit_log),
            "AEXP_RELAY_CONNECT_TIMEOUT": "5",
            "AEXP_RELAY_SSH_BIN": self.ssh_bin,
        }
