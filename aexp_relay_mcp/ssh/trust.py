"""Who is on the other end of a control socket. Only a master that runs as the user's own
uid may get a command or a descriptor.

OpenSSH's client does not check who owns the master it connects to; ssh_config(5) only
asks users to keep ``ControlPath`` in a private directory. People copy
``ControlPath /tmp/cm-%r@%h:%p`` from blog posts, and then another local account can
listen there first: whoever owns that socket reads every command sent through it, and can
answer in the relay's own marker format. The relay reuses the user's ControlPath on
purpose, so it checks, before the first byte goes to any control socket:

* the socket file: a socket (not a symlink to one), owned by the user (``lstat``);
* the directory it sits in: owned by the user or root, and not writable by other users
  unless it is sticky (as /tmp is: there nobody can replace another's file);
* once connected, the peer: its credentials (``SO_PEERCRED`` on Linux, ``LOCAL_PEERCRED``
  on macOS and the BSDs) must be the user's uid.

A socket that fails is never used, and never removed (it is not ours). A spawned ssh is
handed only a ControlPath in a directory no other user can write to at all: ssh connects
on its own later, and cannot be asked who is there.
"""

from __future__ import annotations

import os
import pwd
import socket
import stat
import struct
import sys
from dataclasses import dataclass

# macOS and the BSDs: getsockopt(SOL_LOCAL, LOCAL_PEERCRED) gives a struct xucred.
_SOL_LOCAL = 0
_LOCAL_PEERCRED = 0x001
_XUCRED_SIZE = 4 + 4 + 2 + 2 + 16 * 4


@dataclass(frozen=True)
class Distrust:
    """Why a control socket may not be used."""

    path: str
    reason: str  # "it belongs to aexp-intruder (uid 1002)", ...
    fixable_by_config: bool = True  # the user's ssh config put it there

    def warning(self, host: str, instead: str | None) -> str:
        route = f"its own connection ({instead})" if instead else "a connection of its own"
        return (
            f"The relay passed over the ssh control socket {self.path} for {host}: "
            f"{self.reason}. Whoever owns it would read every command sent through it. "
            f"It used {route} instead. In ~/.ssh/config, give {host} a ControlPath in a "
            "directory only you can write, e.g. `ControlPath ~/.ssh/cm-%C`; if you did not "
            "put that socket there, tell your admins."
        )


def user_uid() -> int:
    return os.geteuid()


def owner_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def directory_problem(path: str, *, for_handoff: bool = False) -> str | None:
    """Why the directory holding path lets another account put or swap a socket there.
    ``for_handoff``: for a spawned ssh, even a sticky world-writable directory will not do
    (a socket that is gone can be replaced before ssh connects)."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        info = os.stat(directory)
    except OSError:
        return None  # nothing is there yet; ssh would fail to bind, not connect
    if info.st_uid not in (user_uid(), 0):
        return f"its directory {directory} belongs to {owner_name(info.st_uid)}"
    writable = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and (for_handoff or not info.st_mode & stat.S_ISVTX):
        return f"its directory {directory} can be written by other users"
    return None


def socket_problem(path: str) -> str | None:
    """Why the file at path is no socket of the user's (None: it is, or there is none)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"it cannot be checked ({exc.strerror})"
    if stat.S_ISLNK(info.st_mode):
        return "it is a symbolic link, which could point at anyone's socket"
    if not stat.S_ISSOCK(info.st_mode):
        return "it is not a socket"
    if info.st_uid != user_uid():
        return f"it belongs to {owner_name(info.st_uid)}, not to you"
    return None


def vouch(path: str) -> Distrust | None:
    """None when a master at path may be used (or there is none yet); else why not."""
    reason = socket_problem(path) or directory_problem(path)
    return Distrust(path, reason) if reason else None


def vouch_for_handoff(path: str) -> Distrust | None:
    """As ``vouch``, for a ControlPath handed to a spawned ssh client."""
    reason = socket_problem(path) or directory_problem(path, for_handoff=True)
    return Distrust(path, reason) if reason else None


def shared_directory(path: str) -> str | None:
    """The directory of a ControlPath when other users can write to it (sticky or not):
    worth a warning even before anyone abuses it."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        info = os.stat(directory)
    except OSError:
        return None
    return directory if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) else None


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a connected Unix socket; None where the
    platform cannot say."""
    if hasattr(socket, "SO_PEERCRED"):
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return int(struct.unpack("3i", creds)[1])
    if sys.platform == "darwin" or "bsd" in sys.platform:
        raw = sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERCRED, _XUCRED_SIZE)
        return int(struct.unpack_from("=II", raw)[1])
    return None


def peer_problem(sock: socket.socket, path: str) -> Distrust | None:
    """After connect, before the first byte: is the peer the user?"""
    try:
        uid = peer_uid(sock)
    except OSError as exc:
        return Distrust(path, f"its peer cannot be checked ({exc.strerror})")
    if uid is not None and uid != user_uid():
        return Distrust(path, f"the process behind it runs as {owner_name(uid)}, not as you")
    return None
