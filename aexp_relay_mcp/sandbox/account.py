"""The remote account: who logs in, its home, and its login-shell profile.

Each sandbox gets its own home (sshd's ``SetEnv HOME``), so its rc files are its own.
Profiles:

* ``clean``: empty rc files, the account benchmarks measure;
* ``noisy``: what many clusters have. ~/.bashrc (which Debian's bash reads for ssh
  commands) prints a banner on stdout, module notices and a tty complaint on stderr, a
  line that looks like a relay marker, and sleeps 0.3 s as a conda init would.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path

SANDBOX_USER = "aexp-sbx"
NOISY_DELAY_S = 0.3
MFA_PASSWORD = "aexp-sandbox-otp"

NOISY_BASHRC = """# ~/.bashrc of the aexp sandbox login node: noisy and slow, as on many clusters.
echo "=================================================================="
echo "  Welcome to login1.aexp-sandbox. Scratch is purged after 30 days."
echo "=================================================================="
echo "@AEXP-0123456789abcdef@ start 1"
echo "Lmod: loading the default modules (git/2.39, python/3.11)" >&2
echo "stdin: is not a tty" >&2
sleep {delay}   # conda init, pyenv init, module restore ...
"""


@dataclass(frozen=True)
class LoginUser:
    name: str
    uid: int
    gid: int
    home: str


def current_user() -> LoginUser:
    pw = pwd.getpwuid(os.geteuid())
    return LoginUser(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


def login_user() -> LoginUser:
    """As root, a dedicated user (created once) so no rc file of root's gets in the way."""
    if os.geteuid() != 0:
        return current_user()
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


def set_password(user: LoginUser, password: str) -> None:
    """For the MFA stand-in (root only): sshd checks it against /etc/shadow."""
    subprocess.run(
        ["chpasswd"], input=f"{user.name}:{password}\n".encode(), check=True, capture_output=True
    )


class Account:
    """The login user's per-sandbox home and its rc files."""

    PROFILES = ("clean", "noisy")

    def __init__(self, user: LoginUser, home: Path, *, delay_s: float = NOISY_DELAY_S) -> None:
        self.user = user
        self.home = home
        self.delay_s = delay_s
        self.profile = "clean"

    def create(self) -> None:
        self.home.mkdir(exist_ok=True)
        self._own(self.home)
        self.set_profile(self.profile)

    def set_profile(self, profile: str) -> None:
        if profile not in self.PROFILES:
            raise ValueError(f"unknown profile {profile!r}; one of {self.PROFILES}")
        self.profile = profile
        bashrc = NOISY_BASHRC.format(delay=self.delay_s) if profile == "noisy" else ""
        for name, text in ((".bashrc", bashrc), (".profile", bashrc)):
            path = self.home / name
            path.write_text(text)
            self._own(path)

    def _own(self, path: Path) -> None:
        if os.geteuid() == 0 and self.user.uid != 0:
            os.chown(path, self.user.uid, self.user.gid)
