"""``aexp-relay-mcp audit``: what the agent did on the cluster, from the audit log.

Pairs each call's ``started`` and final lines, and marks calls that never ended (the
server died mid-call: killed, crashed, or the machine went down) and calls still running.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
from dataclasses import asdict
from pathlib import Path

from ...relay.audit import AuditedCall, AuditReport, parse_since, read_audit

DEFAULT_SINCE = "24h"
OUTCOME_LABELS = {"never_ended": "NEVER ENDED", "running": "running"}


def run_audit(path: Path | None, since: str, as_json: bool) -> int:
    if path is None:
        print("aexp-relay-mcp audit: the audit log is off (AEXP_RELAY_AUDIT_LOG).", file=sys.stderr)
        return 2
    try:
        since_s = parse_since(since)
    except ValueError as exc:
        print(f"aexp-relay-mcp audit: --since {exc}.", file=sys.stderr)
        return 2
    report = read_audit(path, since_s)
    if as_json:
        print(json.dumps([asdict(call) for call in report.calls], indent=2, default=str))
    else:
        print(render_report(report, since))
    return 0


def _local(stamp: str) -> str:
    try:
        moment = _dt.datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _where(call: AuditedCall) -> str:
    return f"{call.host or '-'}:{call.repo or '-'}"


def _outcome(call: AuditedCall) -> str:
    label = OUTCOME_LABELS.get(call.outcome, call.outcome)
    if call.kind and call.kind != call.outcome and call.outcome != "ok":
        label += f" ({call.kind})"
    if call.attempts > 1:
        label += ", ran again (connection dropped)"
    return label


def render_report(report: AuditReport, since: str) -> str:
    if not report.calls:
        exists = report.path.exists()
        return (
            f"No calls in the last {since} ({report.path})."
            if exists
            else f"No audit log yet at {report.path}: no call has been made."
        )
    rows = [
        (
            _local(c.time),
            c.op,
            _outcome(c),
            f"{c.duration_s:.2f}s" if c.duration_s is not None else "-",
            c.surface or "-",
            c.request_id,
            _where(c),
        )
        for c in report.calls
    ]
    header = ("started", "op", "outcome", "took", "from", "request_id", "host:repo")
    widths = [max(len(r[i]) for r in [*rows, header]) for i in range(len(header) - 1)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)) + "  host:repo"]
    for row in rows:
        lines.append(
            "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)) + "  " + row[-1]
        )
    counts: dict[str, int] = {}
    for c in report.calls:
        counts[c.outcome] = counts.get(c.outcome, 0) + 1
    summary = ", ".join(
        f"{n} {OUTCOME_LABELS.get(k, k).lower()}" for k, n in sorted(counts.items())
    )
    lines.append(
        f"\n{len(report.calls)} call(s) in the last {since}: {summary}. Log: {report.path}"
    )
    never = [c for c in report.calls if c.outcome == "never_ended"]
    if never:
        lines.append(
            f"{len(never)} call(s) never ended: the process that made them (pid "
            f"{', '.join(sorted({str(c.pid) for c in never}))}) stopped mid-call, so the "
            "relay could not record how they ended. Check the repo with `aexp-relay-mcp "
            "repo-status` before relying on what they did."
        )
    if report.unreadable_lines:
        lines.append(f"({report.unreadable_lines} unreadable line(s) skipped)")
    return "\n".join(lines)
