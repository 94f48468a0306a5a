"""The sandbox as a whole (``Sandbox``): the login node, its accounts, repos and wandb."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from ..model.config import RelayConfig
from ..ssh.procs import process_table
from .account import MFA_PASSWORD, Account, LoginUser, current_user, login_user, set_password
from .delay_proxy import DelayProxy
from .repos import Repos
from .sshd import SandboxError, SshServer, free_port, sshd_available
from .wandb_stub import install_wandb, make_runs, make_sweep, received

# A power user's settings in the checkout's own config (the rest are in ~/.gitconfig).
POWER_REPO_CONFIG = (
    ("status.showUntrackedFiles", "no"),
    ("push.followTags", "true"),
    ("rebase.autoStash", "true"),
    ("log.showSignature", "true"),
)

KEY_NAMES = ("host_ed25519", "client_ed25519", "other_host_ed25519", "stranger_ed25519")
_KEYS: Path | None = None  # this process's keys, copied into each sandbox

HOST_ALIAS = "aexp-sandbox"
# Test aliases: one whose ProxyCommand hangs, one with a wrong known host key,
# one with a key the server does not accept, one that nothing listens on.
HANG_ALIAS = "aexp-sandbox-hang"
BADKEY_ALIAS = "aexp-sandbox-badhostkey"
UNKNOWNKEY_ALIAS = "aexp-sandbox-unknownhostkey"
NOAUTH_ALIAS = "aexp-sandbox-noauth"
CLOSED_ALIAS = "aexp-sandbox-closed"
BASTION_ALIAS = "aexp-sandbox-bastion"
JUMP_ALIAS = "aexp-sandbox-jump"
MFA_ALIAS = "aexp-sandbox-mfa"
FAR_ALIAS = "aexp-sandbox-far"
SHARED_CP_ALIAS = "aexp-sandbox-sharedcp"

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


class Sandbox:
    """Start with ``with Sandbox() as sb:``; everything it started stops on exit."""

    def __init__(
        self,
        *,
        max_sessions: int = 10,
        runs: int = 3,
        standin: bool = False,
        profile: str = "clean",
        gitconfig: str = "plain",
        shell: str = "bash",
        bastion: bool = False,
        mfa: bool = False,
    ) -> None:
        """``standin=True``: no sshd; ops go through a local stand-in for ssh (labelled so).
        ``shell``: the login user's login shell (bash, zsh, tcsh, csh, fish, mksh, ksh,
        dash); any but bash needs root (an account of its own)."""
        if mfa and os.geteuid() != 0:
            raise SandboxError("the MFA stand-in checks a password, which needs root")
        self.standin = standin
        self.n_runs = runs
        self.root = Path(tempfile.mkdtemp(prefix="aexp-", dir="/tmp"))
        self.ssh_dir = self.root / "ssh"
        self.remote_dir = self.root / "remote"
        self.bin_dir = self.remote_dir / "bin"
        self.wandb = self.bin_dir / "wandb"
        self.wandb_log = self.remote_dir / "wandb-calls.log"
        self.audit_log = self.root / "audit.log"
        self.ssh_config = self.ssh_dir / "ssh_config"
        self.ssh_bin = "ssh"
        self.user: LoginUser = current_user() if standin else login_user(shell)
        self.account = Account(self.user, self.root / "home")
        self.account.profile = profile
        self.account.gitconfig = gitconfig
        self.repos = Repos(self.remote_dir, self.user)
        self.remote_path = f"{self.bin_dir}:/usr/local/bin:/usr/bin:/bin"
        keys = self.ssh_dir
        server = {
            "ssh_dir": keys,
            "user": self.user.name,
            "host_key": keys / "host_ed25519",
            "authorized_keys": keys / "authorized_keys",
        }
        self.server = SshServer("sshd", max_sessions=max_sessions, **server)  # type: ignore[arg-type]
        self.bastion = SshServer("bastion", **server) if bastion else None  # type: ignore[arg-type]
        self.mfa = SshServer("mfa", password=True, **server) if mfa else None  # type: ignore[arg-type]

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
        self.ssh_dir.mkdir()
        self.remote_dir.mkdir()
        if self.standin:
            standin = self.ssh_dir / "ssh-standin"
            standin.write_text(SSH_STANDIN)
            standin.chmod(0o755)
            self.ssh_bin = str(standin)
            self.ssh_config.write_text("# no sshd: local stand-in\n")
            self._make_remote()
            return
        if not sshd_available():
            raise SandboxError(
                "OpenSSH server not found at /usr/sbin/sshd. Install it: "
                "sudo apt-get install -y openssh-server (Debian/Ubuntu), "
                "sudo dnf install -y openssh-server (Fedora/RHEL)."
            )
        os.chmod(self.ssh_dir, 0o711)  # sshd reads authorized_keys as the login user
        os.chmod(self.root, 0o711)
        self._keys()
        self.account.create()
        self._make_remote()
        if self.account.gitconfig == "power":
            self.set_gitconfig("power")
        if self.mfa is not None:
            set_password(self.user, MFA_PASSWORD)
        self.start_sshd()

    def _make_remote(self) -> None:
        self.bin_dir.mkdir()
        install_wandb(self.wandb, self.wandb_log, self.repos)
        self.repos.own(self.remote_dir)
        self.repos.create()
        make_runs(self.cluster / "wandb", self.n_runs, self.repos)
        self.repos.own(self.remote_dir)

    def close(self) -> None:
        self.stop_masters()
        for server in self._servers():
            server.stop()
        self._end_leftovers()
        shutil.rmtree(self.root, ignore_errors=True)

    def _end_leftovers(self) -> None:
        """Remote commands that outlived their server (a test SIGKILLed it, on purpose):
        anything still working in this sandbox's directories ends with it."""
        needle = str(self.root).encode()
        for proc in process_table():
            if proc.pid != os.getpid() and any(needle in a for a in proc.argv):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(proc.pid, signal.SIGKILL)

    def _servers(self) -> list[SshServer]:
        return [s for s in (self.server, self.bastion, self.mfa) if s is not None]

    # ------------------------------------------------------------------ the servers

    def start_sshd(self) -> None:
        for server in self._servers():
            server.env = {
                "HOME": str(self.account.home),
                "PATH": self.remote_path,
                "GIT_CONFIG_SYSTEM": str(self.account.system_gitconfig),
                # as clusters set it for every session: where big files go
                "SCRATCH": str(self.remote_dir),
            }
            if not server.running:
                server.start()
        self._write_client_config()

    def stop_sshd(self) -> None:
        self.server.stop()

    def set_remote_path(self, *dirs: str) -> None:
        """Restart sshd with another PATH for remote commands (e.g. one without git)."""
        self.remote_path = ":".join(dirs)
        self.stop_masters()
        for server in self._servers():
            server.stop()
        self.start_sshd()

    def set_profile(self, profile: str) -> None:
        """Switch the login shell's rc files (clean or noisy); takes effect at once."""
        self.account.set_profile(profile)

    def break_login_shell(self) -> None:
        """The account's rc file ``exec``s another shell: every command is swallowed."""
        self.account.break_login_shell()

    @property
    def profile(self) -> str:
        return self.account.profile

    def set_gitconfig(self, kind: str) -> None:
        """The account's and the system's git configuration (plain or power), and, for a
        power user, the checkout's own config too; takes effect at once."""
        self.account.set_gitconfig(kind)
        power = kind == "power"
        for key, value in POWER_REPO_CONFIG:
            if power:
                self.git(self.cluster, "config", key, value)
            else:
                self.git(self.cluster, "config", "--unset-all", key, check=False)

    @property
    def hooks_dir(self) -> Path:
        """Where the cluster checkout's hooks run from (core.hooksPath of a power user)."""
        if self.account.gitconfig == "power":
            return self.account.hooks
        return self.cluster / ".git" / "hooks"

    def slow_hook(self, name: str, seconds: float, tag: str) -> None:
        """A hook of the checkout that takes a while (as git-lfs's do on a big checkout);
        ``tag`` names its sleep, so a test can see it run."""
        hook = self.hooks_dir / name
        self.write(
            hook, f"#!/bin/sh\n[ -t 0 ] || cat >/dev/null\nexec sh -c 'sleep {seconds}' {tag}\n"
        )
        hook.chmod(0o755)

    def slow_filter(self, pattern: str, seconds: float) -> None:
        """Files matching pattern pass a smudge filter that takes a while to check out (as
        git-lfs's does, or a slow shared filesystem)."""
        info = self.cluster / ".git" / "info"
        info.mkdir(exist_ok=True)
        self.write(info / "attributes", f"{pattern} filter=slow\n")
        self.git(self.cluster, "config", "filter.slow.smudge", f"sleep {seconds}; cat")
        self.git(self.cluster, "config", "filter.slow.clean", "cat")
        self.git(self.cluster, "config", "filter.slow.required", "true")  # as git-lfs sets

    @contextlib.contextmanager
    def small_filesystem(self, size_kb: int = 1024) -> Iterator[Path]:
        """A tmpfs of size_kb for the login user, as a small home quota is (root only):
        a clone there fills up for real."""
        where = self.remote_dir / "small"
        where.mkdir()
        options = f"size={size_kb}k,mode=0755,uid={self.user.uid},gid={self.user.gid}"
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True
        )
        if mounted.returncode != 0:
            raise SandboxError(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
        try:
            yield where
        finally:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)

    def fill(self, where: Path, leave_kb: int) -> None:
        """Fill the filesystem at where until only about leave_kb is free."""
        stat = os.statvfs(where)
        free = stat.f_bavail * stat.f_frsize
        self.write(where / "filler.bin", "x" * max(0, free - leave_kb * 1024))

    def forget_identity(self) -> None:
        """An account with no git identity: none in the checkout, and the login node's git
        told not to guess one from the host name (user.useConfigOnly)."""
        for key in ("user.name", "user.email"):
            self.git(self.cluster, "config", "--unset-all", key, check=False)
        system = self.account.system_gitconfig
        system.write_text(system.read_text() + "[user]\n    useConfigOnly = true\n")

    def lock_objects(self) -> None:
        """A checkout shared with a group: its objects belong to another member (root here)
        and are not writable for the login user."""
        if os.geteuid() != 0 or self.user.uid == 0:
            raise SandboxError("another member's objects need root and a separate login user")
        for dirpath, _, filenames in os.walk(self.cluster / ".git" / "objects"):
            os.chown(dirpath, 0, 0)
            os.chmod(dirpath, 0o755)
            for name in filenames:
                os.chown(os.path.join(dirpath, name), 0, 0)

    def at_lab_scale(
        self, *, refs: int = 5000, runs: int = 2000, files: int = 10000, commits: int = 2000
    ) -> dict[str, int]:
        """A busy lab: ``refs`` new branches on origin (CI and bot branches), ``commits``
        new commits upstream, a sweep of ``runs`` offline runs, and ``files`` changed files
        in the checkout (job outputs nobody ignored). Returns what it made."""
        self.upstream_commits(commits)
        self.new_branches(refs)
        for i in range(files):
            (self.cluster / f"job-{i:05d}.out").write_text(f"step {i}\n")
        self.repos.own(self.cluster)
        make_sweep(self.cluster / "wandb", runs, self.repos)
        return {"refs": refs, "runs": runs, "files": files, "commits": commits}

    def upstream_commits(self, count: int, *, subject_chars: int = 0) -> str:
        """``count`` new commits on origin's main (git fast-import in the other clone), each
        subject padded to ``subject_chars`` (a bot's long messages); the new upstream."""
        head = self.head(self.other)
        stream = []
        for i in range(count):
            subject = f"bot: step {i}"
            if subject_chars:
                filler = " and a long description" * (subject_chars // 20 + 1)
                subject = (subject + filler)[:subject_chars]
            stream += [
                "commit refs/heads/main",
                f"committer Bot <bot@example.invalid> {1767225600 + i} +0000",
                f"data <<END\n{subject}\nEND",
                *([f"from {head}"] if i == 0 else []),
                f"M 644 inline bot/step-{i % 50}.txt",
                f"data <<END\n{i}\nEND",
                "",
            ]
        self.repos.git(self.other, "fast-import", "--quiet", input="\n".join(stream) + "\n")
        self.git(self.other, "reset", "-q", "--hard", "main")
        self.git(self.other, "push", "-q", "origin", "main")
        return self.head(self.other)

    def new_branches(self, count: int, *, long: bool = False) -> None:
        """``count`` new branches on origin at its main (CI and bot branches); ``long``:
        with names as long as such bots make them."""
        upstream = self.origin_refs()["refs/heads/main"]
        name = "ci/nightly-regression/cluster-a100/job" if long else "ci/job"
        lines = "".join(f"create refs/heads/{name}-{i:05d} {upstream}\n" for i in range(count))
        self.repos.git(self.origin, "update-ref", "--stdin", input=lines)

    def changed_tracked_files(self, count: int) -> None:
        """``count`` tracked files in the checkout, under the deep, long paths a sweep's
        outputs have (``data/.../shard-.../sample-....csv``), all of them rewritten since:
        committed first (fast-import), checked out, then changed."""
        paths = [
            f"data/experiment-{i % 10:02d}/seed-{i % 100:03d}/shard-{i // 1000:05d}-of-"
            f"{count:06d}/sample-{i:06d}-augmented-cropped-normalized-224x224.csv"
            for i in range(count)
        ]
        head = self.head(self.cluster)
        stream = [
            "commit refs/heads/main",
            "committer Sweep <sweep@example.invalid> 1767225600 +0000",
            f"data <<END\nsweep outputs ({count} files)\nEND",
            f"from {head}",
            *(f"M 644 inline {p}\ndata <<END\nv1\nEND" for p in paths),
            "",
        ]
        self.repos.git(self.cluster, "fast-import", "--quiet", input="\n".join(stream) + "\n")
        self.git(self.cluster, "reset", "-q", "--hard", "main")
        for p in paths:
            (self.cluster / p).write_text("v2\n")
        self.repos.own(self.cluster)

    def shared_control_path(self) -> tuple[str, str]:
        """An alias whose ControlPath is in a directory every local account can write to,
        as ``ControlPath /tmp/cm-%r@%h:%p`` copied from a blog post: the alias, and the
        socket path ssh makes of it."""
        shared = self.root / "shared-tmp"
        shared.mkdir(exist_ok=True)
        os.chmod(shared, 0o1777)  # like /tmp
        text = self.ssh_config.read_text()
        if SHARED_CP_ALIAS not in text:
            extra = f"    ControlPath {shared}/cm-%r@%h:%p"
            block = self._host_block(SHARED_CP_ALIAS, self.port, extra=extra)
            self.ssh_config.write_text(block + text)  # before Host *: first value wins
        out = subprocess.run(
            [self.ssh_bin, "-F", str(self.ssh_config), "-G", SHARED_CP_ALIAS],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        path = next(
            line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("controlpath ")
        )
        return SHARED_CP_ALIAS, path

    @contextlib.contextmanager
    def far_away(self, rtt_ms: float) -> Iterator[str]:
        """An alias of the login node behind a proxy that delays every byte (rtt_ms a round
        trip): a login node across a campus, on loopback."""
        with DelayProxy(self.port, rtt_ms) as proxy:
            d = self.ssh_dir
            host_key = " ".join((d / "host_ed25519.pub").read_text().split()[:2])
            with open(d / "known_hosts", "a") as known:
                known.write(f"[127.0.0.1]:{proxy.port} {host_key}\n")
            with open(self.ssh_config, "a") as config:
                config.write(self._host_block(FAR_ALIAS, proxy.port))
            yield FAR_ALIAS

    def wandb_received(self) -> list[list[str]]:
        """Every call the stub wandb got, each its exact argv (the program first)."""
        return received(self.wandb_log)

    def undo_reports(self) -> dict[str, str]:
        """Reports the undo of cut ops left in the checkout: request id -> text."""
        where = self.cluster / ".git" / "aexp-relay"
        return {p.name.removeprefix("cut-"): p.read_text() for p in sorted(where.glob("cut-*"))}

    def kill_sessions(self) -> int:
        return self.server.kill_sessions()

    def pause_sshd(self) -> None:
        self.server.pause()

    def resume_sshd(self) -> None:
        self.server.resume()

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def sshd_log(self) -> Path:
        return self.server.log

    @property
    def sshd_pid(self) -> int | None:
        return self.server.group if self.server.running else None

    def logins(self, method: str = "") -> int:
        """Logins to the login node so far, counted from its sshd's log."""
        return self.server.logins(method)

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

    # ------------------------------------------------------------------ keys and clients

    def _keys(self) -> None:
        """Host and client keys: made at run time (never committed), once per process, and
        copied into each sandbox."""
        global _KEYS
        if _KEYS is None or not _KEYS.is_dir():
            where = Path(tempfile.mkdtemp(prefix="aexp-keys-", dir="/tmp"))
            atexit.register(shutil.rmtree, where, True)
            for name in KEY_NAMES:
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "aexp-sandbox",
                     "-f", str(where / name)],
                    check=True,
                )  # fmt: skip
            _KEYS = where
        for name in KEY_NAMES:
            for suffix in ("", ".pub"):
                shutil.copy2(_KEYS / f"{name}{suffix}", self.ssh_dir / f"{name}{suffix}")
        shutil.copy(self.ssh_dir / "client_ed25519.pub", self.ssh_dir / "authorized_keys")
        os.chmod(self.ssh_dir / "authorized_keys", 0o644)

    def _host_block(
        self,
        alias: str,
        port: int,
        *,
        known: str = "known_hosts",
        key: str = "client_ed25519",
        extra: str = "",
        hostname: str = "127.0.0.1",
    ) -> str:
        """One Host block of the sandbox's ssh config: the login user, its key."""
        d = self.ssh_dir
        return f"""Host {alias}
    HostName {hostname}
    Port {port}
    User {self.user.name}
    IdentityFile {d}/{key}
    IdentitiesOnly yes
    IdentityAgent none
    UserKnownHostsFile {d}/{known}
{extra}
"""

    def _write_client_config(self) -> None:
        d = self.ssh_dir
        host_key = " ".join((d / "host_ed25519.pub").read_text().split()[:2])
        other_key = " ".join((d / "other_host_ed25519.pub").read_text().split()[:2])
        known = "".join(
            f"[{name}]:{s.port} {host_key}\n"
            for s in self._servers()
            for name in ("127.0.0.1", "localhost")
        )
        (d / "known_hosts").write_text(known)
        (d / "known_hosts.bad").write_text(f"[127.0.0.1]:{self.port} {other_key}\n")
        (d / "known_hosts.empty").write_text("")

        block = self._host_block
        blocks = [
            block(HOST_ALIAS, self.port),
            block(HANG_ALIAS, self.port, extra="    ProxyCommand sleep 600"),
            block(BADKEY_ALIAS, self.port, known="known_hosts.bad"),
            block(UNKNOWNKEY_ALIAS, self.port, known="known_hosts.empty"),
            block(NOAUTH_ALIAS, self.port, key="stranger_ed25519"),
            block(CLOSED_ALIAS, free_port()),
        ]
        if self.bastion is not None:
            blocks.append(block(BASTION_ALIAS, self.bastion.port))
            # Its own HostName, so its own ControlPath (%C): it never rides the direct master.
            jump = f"    ProxyJump {BASTION_ALIAS}"
            blocks.append(block(JUMP_ALIAS, self.port, hostname="localhost", extra=jump))
        if self.mfa is not None:
            blocks.append(block(MFA_ALIAS, self.mfa.port))
        (d / "ssh_config").write_text(
            "".join(blocks)
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

    # ------------------------------------------------------------------ repos

    @property
    def origin(self) -> Path:
        return self.repos.origin

    @property
    def cluster(self) -> Path:
        return self.repos.cluster

    @property
    def other(self) -> Path:
        return self.repos.other

    def write(self, path: Path, text: str) -> None:
        self.repos.write(path, text)

    def git_env(self) -> dict[str, str]:
        return self.repos.git_env()

    def git(self, cwd: Path, *args: str, check: bool = True) -> str:
        return self.repos.git(cwd, *args, check=check)

    def commit(self, clone: Path, path: str, text: str, message: str) -> str:
        return self.repos.commit(clone, path, text, message)

    def push_from_other(self, path: str = "upstream.txt", text: str = "upstream\n") -> str:
        return self.repos.push_from_other(path, text)

    def head(self, repo: Path) -> str:
        return self.repos.head(repo)

    def origin_refs(self) -> dict[str, str]:
        return self.repos.origin_refs()

    def foreign_clone(self, name: str = "foreign") -> Path:
        """A clone owned by another user (root): git on the login node refuses it."""
        if os.geteuid() != 0 or self.user.uid == 0:
            raise SandboxError("a foreign-owned checkout needs root and a separate login user")
        where = self.remote_dir / name
        self.repos.clone(where, as_user=False)
        make_runs(where / "wandb", 1, self.repos, synced_last=False)
        return where

    # ------------------------------------------------------------------ pointing the relay at it

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
            # The sandbox's own sockets and locks: never the user's real ones.
            "AEXP_RELAY_CONTROL_DIR": str(self.root / "cm"),
        }
