"""A soak, side by side: the same load with and without the shared master SIGKILLed.

Three servers (real MCP stdio servers), eight callers each, calling every read-only tool
in a loop (status, repo_status, fetch, the wandb preview). One run leaves the master
alone; the other SIGKILLs it every ``--kill-every`` seconds, as a laptop that sleeps or a
NAT that forgets does. Printed for each: calls, errors by kind, calls that ran again
after a drop, logins, latency p50/p95/max; then the ratios of the second to the first.
Targets (issue 22): no failed call, and at most one new login per drop across all servers.

    python benchmarks/bench_soak.py [--seconds 90] [--kill-every 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aexp_relay_mcp.adapters.selftest.soak import SoakFigures, soak
from aexp_relay_mcp.sandbox import Sandbox


async def both(seconds: float, kill_every: float) -> tuple[SoakFigures, SoakFigures]:
    with Sandbox() as sb:
        calm = await soak(sb, seconds=seconds, kill_every=seconds * 10)
        killed = await soak(sb, seconds=seconds, kill_every=kill_every)
    return calm, killed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--kill-every", type=float, default=15.0)
    opts = parser.parse_args()
    calm, killed = anyio.run(both, opts.seconds, opts.kill_every)
    print(f"3 servers x 8 callers, read-only tools, {opts.seconds:g} s each run")
    print(f"  master left alone:             {calm.summary()}")
    print(f"  master SIGKILLed every {opts.kill_every:g} s:  {killed.summary()}")

    def ratio(a: float, b: float) -> str:
        return f"{b / a:.2f}" if a else "-"

    p50 = (statistics.median(calm.latencies_ms), statistics.median(killed.latencies_ms))
    print(
        f"  killed / alone: p50 {ratio(*p50)}, p95 "
        f"{ratio(calm.percentile(0.95), killed.percentile(0.95))}, max "
        f"{ratio(max(calm.latencies_ms), max(killed.latencies_ms))}, calls "
        f"{ratio(calm.calls, killed.calls)}"
    )
    ok = killed.failed == 0 and killed.logins <= killed.kills
    print(
        f"  target: no failed call ({killed.failed} failed), at most one login per drop "
        f"({killed.logins} logins for {killed.kills} drops): {'met' if ok else 'MISSED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
