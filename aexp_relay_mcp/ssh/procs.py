"""The local process table: /proc on Linux, ``ps`` elsewhere (macOS).

Used to find the ControlMasters the relay started (``disconnect`` ends every one of
them) and, by the sandbox and the tests, to prove nothing was left behind.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcInfo:
    """One live process."""

    pid: int
    ppid: int
    name: str
    state: str  # "Z" for a zombie
    argv: tuple[bytes, ...]
    uid: int = -1  # its owner; -1 when it could not be read

    @property
    def cmdline(self) -> str:
        return b" ".join(self.argv).decode(errors="replace")


def dead(pid: int) -> bool:
    """Whether pid has ended: gone, or a zombie (dead, waiting to be reaped; one of ours is
    reaped by init once we exit)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no /proc (macOS): alive until reaped
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def process_table() -> list[ProcInfo]:
    """Every process we can see."""
    proc = Path("/proc")
    if (proc / "self" / "stat").exists():
        return _from_proc(proc)
    return _from_ps()


def _from_proc(root: Path) -> list[ProcInfo]:
    table = []
    for entry in root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes()
            uid = entry.stat().st_uid
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
                uid=uid,
            )
        )
    return table


def _from_ps() -> list[ProcInfo]:
    try:
        out = subprocess.run(
            ["ps", "-axo", "pid=,ppid=,uid=,stat=,comm=,args="],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    table = []
    for line in out.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5 or not parts[0].isdigit():
            continue
        args = parts[5] if len(parts) > 5 else parts[4]
        table.append(
            ProcInfo(
                pid=int(parts[0]),
                ppid=int(parts[1]),
                name=parts[4].decode(errors="replace").rsplit("/", 1)[-1],
                state=parts[3][:1].decode(),
                argv=tuple(args.split()),
                uid=int(parts[2]) if parts[2].isdigit() else -1,
            )
        )
    return table
