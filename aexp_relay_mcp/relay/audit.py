"""JSONL audit log: what the agent asked for, and how each call ended.

A call that reaches ssh writes a ``started`` line **before** ssh starts, and its final
line when it ends; both carry the same ``request_id``. A read-only call whose connection
dropped writes a ``retrying`` line for its first run, then runs again under the same id.
A refusal that never reaches ssh writes one line. So a ``started`` line with no final
line means the server died mid-call (SIGKILL, a crash, a power cut): ``aexp-relay-mcp
audit`` shows such calls as never ended.

Each line is one ``write`` on an ``O_APPEND`` descriptor, so lines from concurrent
servers never interleave. The file is created 0600. A log that cannot be written never
breaks an op: we warn on stderr once.

Fields: ``time`` (UTC ISO 8601), ``request_id``, ``op``, ``args``, ``host``, ``repo``,
``approved``, ``outcome`` (started; retrying; then ok, rejected, consent_required,
consent_declined, consent_cancelled, consent_unavailable, failed, timeout, cancelled,
interrupted, unreachable), ``kind``, ``exit_code``, ``duration_s``, ``pid`` (of the
process that made the call), ``surface`` (mcp, cli, library), ``via`` (mux, ssh,
direct) and ``multiplexed``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..ssh.procs import process_table

AUDIT_FIELDS = (
    "time",
    "request_id",
    "op",
    "args",
    "host",
    "repo",
    "approved",
    "outcome",
    "kind",
    "exit_code",
    "duration_s",
    "pid",
    "surface",
)
FINAL_OUTCOMES = (
    "ok",
    "rejected",
    "consent_required",
    "consent_declined",
    "consent_cancelled",
    "consent_unavailable",
    "failed",
    "timeout",
    "cancelled",
    "interrupted",
    "unreachable",
)


class AuditLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._warned = False
        self._dir_ready = False
        self._lock = threading.Lock()

    def record(self, **fields: Any) -> None:
        if self.path is None:
            return
        entry = {name: fields.get(name) for name in AUDIT_FIELDS}
        entry["pid"] = entry["pid"] or os.getpid()
        entry["time"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")
        entry.update({k: v for k, v in fields.items() if k not in entry})
        line = (json.dumps(entry, ensure_ascii=True, default=str) + "\n").encode()
        try:
            if not self._dir_ready:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._dir_ready = True
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            with self._lock:
                if self._warned:
                    return
                self._warned = True
            print(
                f"aexp-relay-mcp: warning: cannot write the audit log {self.path}: {exc}. "
                "Ops continue; set AEXP_RELAY_AUDIT_LOG to a writable path.",
                file=sys.stderr,
            )


# --------------------------------------------------------------------------- reading it back


@dataclass(frozen=True)
class AuditedCall:
    """One call, its started and final lines paired.

    ``outcome`` is the final line's, or ``never_ended`` (the process that made it is
    gone: it died mid-call), or ``running`` (that process still runs).
    """

    request_id: str
    time: str  # when it started (or was refused), UTC ISO 8601
    op: str
    host: str | None
    repo: str | None
    args: Any
    approved: bool | None
    outcome: str
    kind: str | None
    exit_code: int | None
    duration_s: float | None
    pid: int | None
    surface: str | None
    attempts: int = 1  # runs: 2 when a dropped connection made it run again

    @property
    def ended(self) -> bool:
        return self.outcome not in ("never_ended", "running")


@dataclass(frozen=True)
class AuditReport:
    path: Path
    calls: list[AuditedCall]
    unreadable_lines: int


def parse_since(text: str) -> float:
    """``30m``, ``2h``, ``1d``, ``1w``, ``90s`` (or plain seconds) -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    value = text.strip().lower()
    number, unit = (value[:-1], value[-1]) if value[-1:] in units else (value, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise ValueError(f"{text!r} is not a duration such as 30m, 2h, 1d or 1w") from None
    if not seconds > 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return seconds


def read_audit(
    path: Path,
    since_s: float | None = None,
    *,
    now: _dt.datetime | None = None,
    alive: Callable[[int], bool] | None = None,
) -> AuditReport:
    """Pair the log's lines by request_id, oldest first; calls older than since_s left out."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    alive = alive or _relay_processes()
    cutoff = now - _dt.timedelta(seconds=since_s) if since_s else None
    started: dict[str, dict[str, Any]] = {}
    finals: dict[str, dict[str, Any]] = {}
    retried: dict[str, int] = {}
    order: list[str] = []
    unreadable = 0
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return AuditReport(path, [], 0)
    for raw in text.splitlines():
        try:
            entry = json.loads(raw)
            stamp = _dt.datetime.fromisoformat(entry["time"])
            rid = str(entry["request_id"])
        except (ValueError, KeyError, TypeError):
            unreadable += int(bool(raw.strip()))
            continue
        if cutoff is not None and stamp < cutoff and rid not in started:
            continue
        if rid not in started and rid not in finals and rid not in retried:
            order.append(rid)
        outcome = entry.get("outcome")
        if outcome == "retrying":
            retried[rid] = retried.get(rid, 0) + 1
            continue
        (started if outcome == "started" else finals)[rid] = entry
    calls = [
        _pair(rid, started.get(rid), finals.get(rid), alive, 1 + retried.get(rid, 0))
        for rid in order
    ]
    return AuditReport(path, calls, unreadable)


def _pair(
    rid: str,
    start: dict[str, Any] | None,
    final: dict[str, Any] | None,
    alive: Callable[[int], bool],
    attempts: int = 1,
) -> AuditedCall:
    first = start or final or {}
    last = final or start or {}
    pid = first.get("pid")
    if final is not None:
        outcome = str(final.get("outcome"))
    else:
        outcome = "running" if isinstance(pid, int) and alive(pid) else "never_ended"
    return AuditedCall(
        request_id=rid,
        time=str(first.get("time")),
        op=str(first.get("op")),
        host=first.get("host"),
        repo=first.get("repo"),
        args=first.get("args"),
        approved=first.get("approved"),
        outcome=outcome,
        kind=last.get("kind") if final is not None else None,
        exit_code=last.get("exit_code") if final is not None else None,
        duration_s=last.get("duration_s") if final is not None else None,
        pid=pid if isinstance(pid, int) else None,
        surface=first.get("surface"),
        attempts=attempts,
    )


def _relay_processes() -> Callable[[int], bool]:
    """Whether a pid is a running relay process (not a recycled pid of something else).
    The process table is read once per report, however many calls never ended."""
    pids: set[int] | None = None

    def alive(pid: int) -> bool:
        nonlocal pids
        if pids is None:
            pids = {p.pid for p in process_table() if p.state != "Z" and "aexp" in p.cmdline}
        return pid in pids

    return alive
