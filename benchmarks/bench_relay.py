"""Relay latency against the sandbox, side by side with raw ssh, in one run.

    python benchmarks/bench_relay.py [--calls 20] [--json results.json]

Each case is measured interleaved with the others (round-robin), so machine noise hits
every case alike; the table shows medians and the ratios between cases.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from aexp_relay_mcp import RelayClient
from aexp_relay_mcp.sandbox import HOST_ALIAS, Sandbox

Case = Callable[[], Awaitable[None]]


def raw_ssh(sb: Sandbox) -> Case:
    command = f"cd {shlex.quote(str(sb.cluster))} && git status --porcelain=v2 --branch"

    async def run() -> None:
        proc = await asyncio.create_subprocess_exec(
            "ssh", "-n", "-F", str(sb.ssh_config), HOST_ALIAS, command,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        await proc.communicate()
        assert proc.returncode == 0

    return run


def relay(client: RelayClient) -> Case:
    async def run() -> None:
        await client.request("repo_status")

    return run


async def measure(cases: dict[str, Case], calls: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in cases}
    for case in cases.values():  # warm-up
        await case()
    for _ in range(calls):
        for name, case in cases.items():
            start = time.perf_counter()
            await case()
            times[name].append((time.perf_counter() - start) * 1000)
    return times


async def run_cases(sb: Sandbox, calls: int) -> dict[str, list[float]]:
    client = RelayClient(config=sb.config(audit_log=None))
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "aexp_relay_mcp", "serve"], env=sb.env()
    )
    async with (
        stdio_client(params) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()

        async def mcp_call() -> None:
            result = await session.call_tool("airgapped_repo_status", {})
            assert not result.is_error

        cases = {
            "raw fresh ssh": raw_ssh(sb),
            "relay repo_status": relay(client),
            "MCP airgapped_repo_status": mcp_call,
        }
        return await measure(cases, calls)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with Sandbox() as sb:
        times = asyncio.run(run_cases(sb, args.calls))
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"{'case':<28}{'median ms':>12}{'min ms':>10}{'max ms':>10}   (n={args.calls})")
    for name, t in times.items():
        print(f"{name:<28}{medians[name]:>12.1f}{min(t):>10.1f}{max(t):>10.1f}")
    ratios = {
        "relay / raw fresh ssh": medians["relay repo_status"] / medians["raw fresh ssh"],
        "MCP - relay (ms)": medians["MCP airgapped_repo_status"] - medians["relay repo_status"],
    }
    print()
    for name, value in ratios.items():
        print(f"{name:<28}{value:>12.2f}")
    if args.json:
        args.json.write_text(json.dumps({"medians_ms": medians, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
