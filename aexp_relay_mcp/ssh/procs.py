"""The local process table: /proc on Linux, ``ps`` elsewhere (macOS).

Used to find the ControlMasters the relay started (``disconnect`` ends every one of
them) and, by the sandbox and the tests, to prove nothing was left behind.
"""

from __future__ import annotations

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

    @property
    def cmdline(self) -> str:
        return b" ".join(self.argv).decode(errors="replace")


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


def _from_ps() -> list[ProcInfo]:
    try:
        out = subprocess.run(
            ["ps", "-axo", "pid=,ppid=,stat=,comm=,args="],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    table = []
    for line in out.splitlines():
        parts = line.split(None, 4)
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        args = parts[4] if len(parts) > 4 else parts[3]
        table.append(
            ProcInfo(
                pid=int(parts[0]),
                ppid=int(parts[1]),
                name=parts[3].decode(errors="replace").rsplit("/", 1)[-1],
                state=parts[2][:1].decode(),
                argv=tuple(args.split()),
            )
        )
    return table
