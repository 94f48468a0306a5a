"""A soak: several servers, each with several callers, calling the read-only tools in a
loop while the shared connection is killed again and again, as laptops sleep and NATs
forget. Every call must succeed (the relay runs a read-only call cut by a drop once more),
and each drop may cost one new login, across all the servers.

Used by the test suite (briefly) and ``benchmarks/bench_soak.py`` (longer), which prints
the figures: calls, errors by kind, logins, latency.
"""

from __future__ import annotations

import os
import signal
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import anyio
from mcp import ClientSession

from ...sandbox import Sandbox
from ..mcp.tools import tool_name
from .run import run_sweep
from .sweep import CALL_TIMEOUT_S, Sweep, payload

# The read-only tools, and the answer each gives when all is well (wandb_sync without
# approve answers with its preview, as kind consent_required).
READ_ONLY = (
    ("status", None),
    ("repo_status", None),
    ("fetch", None),
    ("wandb_sync", "consent_required"),
)


@dataclass
class SoakFigures:
    calls: int = 0
    kinds: Counter[str] = field(default_factory=Counter)  # error kinds; "ok" for successes
    retried: int = 0  # calls that said the connection dropped and they ran again
    latencies_ms: list[float] = field(default_factory=list)
    kills: int = 0
    logins: int = 0

    @property
    def failed(self) -> int:
        return self.calls - self.kinds["ok"]

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    def summary(self) -> str:
        errors = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items()) if k != "ok")
        median = statistics.median(self.latencies_ms) if self.latencies_ms else 0.0
        return (
            f"{self.calls} calls, {self.failed} failed ({errors or 'none'}), {self.retried} ran "
            f"again after a drop; {self.kills} master kills, {self.logins} logins; latency ms "
            f"p50 {median:.0f}, p95 {self.percentile(0.95):.0f}, max "
            f"{max(self.latencies_ms, default=0):.0f}"
        )


async def soak(
    sb: Sandbox, *, seconds: float, kill_every: float, servers: int = 3, callers: int = 8
) -> SoakFigures:
    """Run the soak against sb; the figures. The master is SIGKILLed every ``kill_every``
    seconds (after a first call made it)."""
    figures = SoakFigures()
    stop_at = 0.0

    async def caller(session: ClientSession, index: int) -> None:
        turn = index
        while time.monotonic() < stop_at:
            tool, fine = READ_ONLY[turn % len(READ_ONLY)]
            turn += 1
            started = time.perf_counter()
            result = await session.call_tool(
                tool_name(tool), {}, read_timeout_seconds=CALL_TIMEOUT_S
            )
            figures.latencies_ms.append((time.perf_counter() - started) * 1000)
            data = payload(result)
            kind = str(data.get("kind")) if result.is_error else "ok"
            figures.calls += 1
            figures.kinds["ok" if kind in ("ok", fine) else kind] += 1
            warnings = data.get("warnings") or []
            figures.retried += any("dropped" in str(w) for w in warnings)

    async def server(index: int) -> None:
        async def callers_of(sweep: Sweep) -> None:
            async with anyio.create_task_group() as tg:
                for c in range(callers):
                    tg.start_soon(caller, sweep.session, index * callers + c)

        await run_sweep(sb.env(), callers_of)

    async def killer() -> None:
        while time.monotonic() + kill_every < stop_at:
            await anyio.sleep(kill_every)
            masters = sb.processes(masters=True)
            for pid in masters:
                os.kill(pid, signal.SIGKILL)
            figures.kills += bool(masters)

    async def first_call(sweep: Sweep) -> None:
        await sweep.call(tool_name("repo_status"))

    await run_sweep(sb.env(), first_call)  # the soak starts on a live master
    logins = sb.logins()
    stop_at = time.monotonic() + seconds
    async with anyio.create_task_group() as tg:
        for i in range(servers):
            tg.start_soon(server, i)
        tg.start_soon(killer)
    figures.logins = sb.logins() - logins
    return figures
