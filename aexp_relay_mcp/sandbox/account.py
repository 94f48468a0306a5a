"""The remote account: who logs in, its login shell, its home, and its rc-file profile.

Each sandbox gets its own home (sshd's ``SetEnv HOME``), so its rc files are its own.
The login shell is the account's (``shell=``): bash, or, as root, one account per shell
(``aexp-sbx-tcsh``, ``aexp-sbx-fish``...), since sshd always runs the account's own.
Profiles:

* ``clean``: empty rc files, the account benchmarks measure;
* ``noisy``: what many clusters have, in the rc file that shell reads for an ssh command
  (bash: ~/.bashrc; zsh: ~/.zshenv; tcsh and csh: ~/.cshrc; fish: config.fish). It
  prints a banner on stdout, module notices and a tty complaint on stderr, a line that
  looks like a relay marker, loads modules, and sleeps 0.3 s as a conda init would; below
  its interactive-only guard it sets an https proxy, as cluster docs tell users to. tcsh
  gets a noisy ~/.login too (read only by interactive logins), fish a greeting. ksh, mksh
  and dash read no rc file for a command: their noisy profile is as quiet as clean.

Git configurations (``gitconfig``), for the account and the system:

* ``plain``: none;
* ``power``: a power user's ~/.gitconfig (untracked files hidden, colours always, quoted
  paths, signatures and decorations in logs, pagers, rebase and autostash by default,
  pushing tags and matching branches...), a system config (``GIT_CONFIG_SYSTEM``), and
  ``core.hooksPath`` with chatty hooks that print on both streams, marker and porcelain
  look-alikes included. No value a tool reports may change on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .sshd import SandboxError

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

NOISY_CSHRC = """# ~/.cshrc of the aexp sandbox login node (tcsh): noisy and slow, as on clusters.
echo "=================================================================="
echo "  Welcome to login1.aexp-sandbox (tcsh). Scratch is purged after 30 days."
echo "=================================================================="
echo "@AEXP-0123456789abcdef@ start 1"
alias module 'echo "Lmod: loading \\!* (git/2.39, python/3.11)" > /dev/stderr'
module load default
echo "stdin: is not a tty" > /dev/stderr
sleep {delay}
if ( ! $?prompt ) exit
# interactive shells only, as many cluster docs have it:
setenv https_proxy http://proxy.aexp-sandbox.invalid:3128
"""

NOISY_LOGIN = """# ~/.login: csh and tcsh read it for interactive logins only, never for a command.
echo "~/.login: you have new mail"
echo "quota: 97% of your home is used" > /dev/stderr
"""

NOISY_CONFIG_FISH = """# ~/.config/fish/config.fish of the aexp sandbox login node: noisy and slow.
echo "=================================================================="
echo "  Welcome to login1.aexp-sandbox (fish). Scratch is purged after 30 days."
echo "=================================================================="
echo "@AEXP-0123456789abcdef@ start 1"
function module; echo "Lmod: loading $argv (git/2.39, python/3.11)" >&2; end
module load default
echo "stdin: is not a tty" >&2
sleep {delay}
function fish_greeting; echo "Hi from fish!"; end
status is-interactive; or return
# interactive shells only, as many cluster docs have it:
set -gx https_proxy http://proxy.aexp-sandbox.invalid:3128
"""

# The rc files each login shell reads for a command over ssh, and the noisy text of each.
NOISY_RC: dict[str, tuple[tuple[str, str], ...]] = {
    "bash": ((".bashrc", NOISY_BASHRC), (".profile", NOISY_BASHRC)),
    "zsh": ((".zshenv", NOISY_BASHRC.replace("case $- in *i*) ;; *) return ;; esac",
                                             "[[ -o interactive ]] || return")),),
    "tcsh": ((".cshrc", NOISY_CSHRC), (".login", NOISY_LOGIN)),
    "csh": ((".cshrc", NOISY_CSHRC), (".login", NOISY_LOGIN)),
    "fish": ((".config/fish/config.fish", NOISY_CONFIG_FISH),),
    "mksh": (),
    "ksh": (),
    "dash": (),
    "nologin": (),  # not a shell at all: "This account is currently not available."
}  # fmt: skip
SHELLS = tuple(NOISY_RC)

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
    shell: str = "/bin/bash"


def current_user() -> LoginUser:
    pw = pwd.getpwuid(os.geteuid())
    return LoginUser(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_shell)


def shell_path(shell: str) -> str:
    """Where the login shell is installed; SandboxError when it is not."""
    if shell not in SHELLS:
        raise ValueError(f"unknown login shell {shell!r}; one of {SHELLS}")
    found = shutil.which(shell, path="/bin:/usr/bin:/usr/local/bin:/usr/sbin:/sbin")
    if found is None:
        raise SandboxError(
            f"the login shell {shell} is not installed: apt-get install -y {shell} "
            "(Debian/Ubuntu; csh comes with tcsh)"
        )
    return found


@contextlib.contextmanager
def accounts_lock() -> Iterator[None]:
    """One process at a time changes the machine's accounts (test workers run sandboxes
    side by side; two `useradd` of one name would race)."""
    with open("/tmp/aexp-accounts.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def login_user(shell: str = "bash") -> LoginUser:
    """As root, a dedicated user per login shell (created once; bash's is ``aexp-sbx``),
    so no rc file of root's gets in the way. Not root: the current user, bash only."""
    if os.geteuid() != 0:
        if shell != "bash":
            raise SandboxError(
                f"a {shell} login shell needs an account of its own, which needs root"
            )
        return current_user()
    path = shell_path(shell)
    name = SANDBOX_USER if shell == "bash" else f"{SANDBOX_USER}-{shell}"
    with accounts_lock():
        return _account(name, path)


def _account(name: str, path: str) -> LoginUser:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        home = f"/var/lib/{name}"
        subprocess.run(
            ["useradd", "--system", "--create-home", "--home-dir", home, "--shell", path, name],
            check=True,
            capture_output=True,
        )
        # sshd without PAM refuses a locked account ("!"); "*" has no password but is open.
        subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True)
        pw = pwd.getpwnam(name)
    if pw.pw_shell != path:
        subprocess.run(["usermod", "-s", path, name], check=True, capture_output=True)
    _list_in_etc_shells(path)
    return LoginUser(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, path)


def _list_in_etc_shells(path: str) -> None:
    """As chsh would: a login shell not in /etc/shells is refused by some services."""
    try:
        listed = Path("/etc/shells").read_text().split()
    except OSError:
        listed = []
    if path not in listed:
        with open("/etc/shells", "a") as shells:
            shells.write(f"{path}\n")


INTRUDER = "aexp-intruder"


def intruder() -> LoginUser:
    """Another local account on the user's own machine (root only; created once): the one
    that listens at a shared ControlPath first."""
    with accounts_lock():
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
    with accounts_lock():
        subprocess.run(
            ["chpasswd"],
            input=f"{user.name}:{password}\n".encode(),
            check=True,
            capture_output=True,
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

    @property
    def shell(self) -> str:
        """The login shell's name: bash, tcsh, fish..."""
        return os.path.basename(self.user.shell)

    def set_profile(self, profile: str) -> None:
        """clean or noisy, in the rc files the account's login shell reads (every shell's
        rc files exist, empty but for those: a clean account is clean whatever reads it)."""
        if profile not in self.PROFILES:
            raise ValueError(f"unknown profile {profile!r}; one of {self.PROFILES}")
        self.profile = profile
        mine = dict(NOISY_RC.get(self.shell, ())) if profile == "noisy" else {}
        every = {name for files in NOISY_RC.values() for name, _ in files}
        for name in sorted(every):
            path = self.home / name
            path.parent.mkdir(parents=True, exist_ok=True)
            self._own(path.parent)
            path.write_text(mine.get(name, "").format(delay=self.delay_s))
            self._own(path)

    def break_login_shell(self) -> None:
        """An ``exec`` at the top of the rc file, as a user who prefers another shell puts
        there: the login shell becomes ``/bin/sh`` reading nothing, and never runs the
        command it was given."""
        files = NOISY_RC.get(self.shell, ())
        if not files:
            raise ValueError(f"{self.shell} reads no rc file for a command")
        path = self.home / files[0][0]
        path.write_text("exec /bin/sh\n" + path.read_text())
        self._own(path)

    def _own(self, path: Path) -> None:
        if os.geteuid() == 0 and self.user.uid != 0:
            os.chown(path, self.user.uid, self.user.gid)
