"""JSONL audit log: what the agent asked for, and how each call ended.

A call that reaches ssh writes a ``started`` line **before** ssh starts, and its final
line when it ends; both carry the same ``request_id``. A refusal that never reaches
ssh writes one line. So a ``started`` line with no final line means the server died
mid-call (SIGKILL, a crash, a power cut): ``aexp-relay-mcp audit`` shows such calls
as never ended.

Each line is one ``write`` on an ``O_APPEND`` descriptor, so lines from concurrent
servers never interleave. The file is created 0600. A log that cannot be written never
breaks an op: we warn on stderr once.

Fields: ``time`` (UTC ISO 8601), ``request_id``, ``op``, ``args``, ``host``, ``repo``,
``approved``, ``outcome`` (started; then ok, rejected, consent_required,
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
from pathlib import Path
from typing import Any

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
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
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
