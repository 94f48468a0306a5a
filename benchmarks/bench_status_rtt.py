"""How many round trips `airgapped_status` costs, against one tool call, over a slow link.

A proxy on loopback delays every byte (50 ms a round trip by default): a login node across a
campus. Status and one repo_status call run interleaved, over a warm shared connection,
and the medians are printed with their ratio and in round trips of the link.
Target (issue 16): status within 8 round trips (400 ms at 50 ms).

    python benchmarks/bench_status_rtt.py [--rtt-ms 50] [--rounds 9]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aexp_relay_mcp import RelayClient
from aexp_relay_mcp.sandbox import Sandbox


async def measure(client: RelayClient, rounds: int) -> tuple[list[float], list[float]]:
    await client.check_connection()  # the shared connection, started once
    status: list[float] = []
    call: list[float] = []
    for i in range(rounds):
        for which in ("status", "call") if i % 2 == 0 else ("call", "status"):
            started = time.perf_counter()
            if which == "status":
                result = await client.check_connection()
                assert result.reachable and result.problem is None, result
                status.append(time.perf_counter() - started)
            else:
                await client.request("repo_status")
                call.append(time.perf_counter() - started)
    return status, call


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rtt-ms", type=float, default=50.0)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    with Sandbox() as sb, sb.far_away(args.rtt_ms) as alias:
        client = RelayClient(config=sb.config(ssh_host=alias))
        status, call = asyncio.run(measure(client, args.rounds))
    s_ms, c_ms = statistics.median(status) * 1000, statistics.median(call) * 1000
    rtts = s_ms / args.rtt_ms
    print(f"link: {args.rtt_ms:g} ms round trip (delay proxy on loopback), {args.rounds} rounds")
    print(f"status      median {s_ms:7.1f} ms  = {rtts:4.1f} round trips")
    print(f"tool call   median {c_ms:7.1f} ms  = {c_ms / args.rtt_ms:4.1f} round trips")
    print(f"status / one tool call: {s_ms / c_ms:.2f}")
    verdict = "met" if rtts <= 8 else "MISSED"
    print(f"target: status within 8 round trips ({8 * args.rtt_ms:g} ms): {verdict}")
    return 0 if rtts <= 8 else 1


if __name__ == "__main__":
    sys.exit(main())
