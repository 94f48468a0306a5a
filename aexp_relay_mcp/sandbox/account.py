"""The remote account: who logs in, its home, and its login-shell profile.

Each sandbox gets its own home (sshd's ``SetEnv HOME``), so its rc files are its own.
Profiles:

* ``clean``: empty rc files, the account benchmarks measure;
* ``noisy``: what many clusters have. ~/.bashrc (which Debian's bash reads for ssh
  commands) prints a banner on stdout, module notices and a tty complaint on stderr, a
  line that looks like a relay marker, and sleeps 0.3 s as a conda init would; below its
  interactive-only guard it sets an https proxy, as cluster docs tell users to.

Git configurations (``gitconfig``), for the account and the system:

* ``plain``: none;
* ``power``: a power user's ~/.gitconfig (untracked files hidden, colours always, quoted
  paths, signatures and decorations in logs, pagers, rebase and autostash by default,
  pushing tags and matching branches...), a system config (``GIT_CONFIG_SYSTEM``), and
  ``core.hooksPath`` with chatty hooks that print on both streams, marker and porcelain
  look-alikes included. No value a tool reports may change on it.
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
case $- in *i*) ;; *) return ;; esac
# interactive shells only, as many cluster docs have it:
export https_proxy=http://proxy.aexp-sandbox.invalid:3128
"""

POWER_GITCONFIG = """# ~/.gitconfig of a power user on the aexp sandbox login node.
[user]
    name = Power User
    email = power@example.invalid
[core]
    hooksPath = {hooks}
    quotePath = true
    pager = less -FRX
    abbrev = 5
[color]
    ui = always
[status]
    showUntrackedFiles = no
    aheadBehind = false
    renames = false
    short = true
    branch = true
[diff]
    renames = copies
    noprefix = true
[log]
    showSignature = true
    decorate = full
    abbrevCommit = true
[format]
    pretty = oneline
[pager]
    status = true
    log = true
[i18n]
    logOutputEncoding = ISO-8859-1
[pull]
    rebase = merges
    ff = only
[merge]
    ff = false
    stat = true
    log = true
    autoStash = true
    conflictStyle = diff3
[rebase]
    autoStash = true
    autoSquash = true
    updateRefs = true
    stat = true
    forkPoint = false
    rebaseMerges = true
[push]
    default = matching
    followTags = true
    recurseSubmodules = on-demand
[fetch]
    prune = false
    output = compact
"""

SYSTEM_GITCONFIG = """# the login node's system git config (GIT_CONFIG_SYSTEM in the sandbox)
[color]
    status = always
    branch = always
[status]
    relativePaths = true
    showStash = true
[advice]
    statusHints = true
"""

# Hooks that talk: on stdout and stderr, with a marker look-alike and a porcelain one.
CHATTY_HOOK = """#!/bin/sh
echo "hook {name}: checking your workspace policy ..."
echo "@AEXP-0123456789abcdef@ exit 0"
printf '=\\trefs/heads/fake:refs/heads/fake\\t[up to date]\\n'
echo "hook {name}: Permission denied? no, all good" >&2
[ -t 0 ] || cat >/dev/null
exit 0
"""
CHATTY_HOOKS = (
    "post-checkout",
    "post-merge",
    "post-commit",
    "post-rewrite",
    "prepare-commit-msg",
    "pre-push",
    "reference-transaction",
)
GITCONFIGS = ("plain", "power")


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


INTRUDER = "aexp-intruder"


def intruder() -> LoginUser:
    """Another local account on the user's own machine (root only; created once): the one
    that listens at a shared ControlPath first."""
    try:
        pw = pwd.getpwnam(INTRUDER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", INTRUDER],
            check=True,
            capture_output=True,
        )
        pw = pwd.getpwnam(INTRUDER)
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
        self.gitconfig = "plain"
        self.system_gitconfig = home.parent / "etc" / "gitconfig"
        self.hooks = home / ".githooks"

    def create(self) -> None:
        self.home.mkdir(exist_ok=True)
        self._own(self.home)
        self.system_gitconfig.parent.mkdir(exist_ok=True)
        self.system_gitconfig.parent.chmod(0o755)
        self.set_profile(self.profile)
        self.set_gitconfig(self.gitconfig)

    def set_gitconfig(self, kind: str) -> None:
        """plain or power: the account's ~/.gitconfig, hooks, and the system config."""
        if kind not in GITCONFIGS:
            raise ValueError(f"unknown gitconfig {kind!r}; one of {GITCONFIGS}")
        self.gitconfig = kind
        power = kind == "power"
        self.hooks.mkdir(exist_ok=True)
        self._own(self.hooks)
        for name in CHATTY_HOOKS:
            hook = self.hooks / name
            hook.write_text(CHATTY_HOOK.format(name=name))
            hook.chmod(0o755)
            self._own(hook)
        files = (
            (self.home / ".gitconfig", POWER_GITCONFIG.format(hooks=self.hooks) if power else ""),
            (self.system_gitconfig, SYSTEM_GITCONFIG if power else ""),
        )
        for path, text in files:
            path.write_text(text)
            path.chmod(0o644)
            self._own(path)

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
