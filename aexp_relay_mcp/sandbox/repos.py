"""The repositories a login node has: a bare "GitHub" origin, the cluster checkout the
tools work on, and a second clone for "someone else pushed"."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .account import LoginUser
from .sshd import SandboxError

REPO_NAMES = ("origin.git", "cluster", "other")
# The repositories made once per process and login user (uid -> where), then copied into
# each sandbox: a test suite makes hundreds of sandboxes, and git's dozen processes are most
# of the cost of one.
_TEMPLATES: dict[int, Path] = {}


class Repos:
    def __init__(self, remote_dir: Path, user: LoginUser) -> None:
        self.remote_dir = remote_dir
        self.user = user
        self.origin = remote_dir / "origin.git"
        self.cluster = remote_dir / "cluster"
        self.other = remote_dir / "other"

    def create(self) -> None:
        """origin, cluster and other: a copy (owners kept) of the ones this process made
        for the login user first, pointed at this sandbox's own paths."""
        template = _TEMPLATES.get(self.user.uid)
        if template is None or not template.is_dir():
            where = Path(tempfile.mkdtemp(prefix="aexp-tpl-", dir="/tmp"))
            atexit.register(shutil.rmtree, where, True)
            os.chmod(where, 0o711)
            maker = Repos(where, self.user)
            maker.own(where)
            maker.build()
            template = _TEMPLATES[self.user.uid] = where
        subprocess.run(
            ["cp", "-a", *(str(template / name) for name in REPO_NAMES), str(self.remote_dir)],
            check=True,
            capture_output=True,
        )
        for config in (
            self.origin / "config",
            self.cluster / ".git" / "config",
            self.other / ".git" / "config",
        ):
            text = config.read_text()  # written in place: its owner stays
            config.write_text(text.replace(str(template), str(self.remote_dir)))

    def build(self) -> None:
        self.git(self.remote_dir, "init", "-q", "--bare", "-b", "main", str(self.origin))
        # "GitHub" runs its own hooks, whatever core.hooksPath the login user has.
        self.git(self.origin, "config", "core.hooksPath", str(self.origin / "hooks"))
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
            self.clone(clone)

    def clone(self, where: Path, *, as_user: bool = True) -> Path:
        """A clone of origin; ``as_user=False`` (root only) hands it to root afterwards, as
        a checkout a colleague made: git on the login node then refuses it as "dubious
        ownership"."""
        self.git(self.remote_dir, "clone", "-q", str(self.origin), str(where))
        self.git(where, "config", "user.name", "Sandbox User")
        self.git(where, "config", "user.email", "sandbox@example.invalid")
        if not as_user:
            for dirpath, dirnames, filenames in os.walk(where):
                os.chown(dirpath, 0, 0)
                for name in dirnames + filenames:
                    os.lchown(os.path.join(dirpath, name), 0, 0)
            os.chmod(where, 0o755)
        return where

    # ------------------------------------------------------------------ helpers

    def _switch(self) -> bool:
        return os.geteuid() == 0 and self.user.uid != 0

    def own(self, path: Path) -> None:
        """Hand path (recursively) to the login user."""
        if not self._switch():
            return
        for dirpath, dirnames, filenames in os.walk(path):
            os.chown(dirpath, self.user.uid, self.user.gid)
            for name in dirnames + filenames:
                os.lchown(os.path.join(dirpath, name), self.user.uid, self.user.gid)

    def write(self, path: Path, text: str) -> None:
        path.write_text(text)
        if self._switch():
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

    def git(self, cwd: Path, *args: str, check: bool = True, input: str | None = None) -> str:
        """Run git in cwd as the login user (so files keep the right owner); ``input`` goes
        to its stdin."""
        switch = self._switch()
        proc = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=self.git_env(),
            input=input.encode() if input is not None else None,
            capture_output=True,
            user=self.user.uid if switch else None,
            group=self.user.gid if switch else None,
            extra_groups=[] if switch else None,
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
