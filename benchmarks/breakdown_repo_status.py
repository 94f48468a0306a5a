"""Where a warm relay `repo_status` spends its time, over one shared ssh connection.

    python benchmarks/breakdown_repo_status.py [--calls 25]

Interleaves: the raw `git status`, raw status + the HEAD-subject log, our exact remote
command run through raw ssh, `timeout … sh -c` around the raw status, and the relay itself.
The differences between neighbours are the cost of each piece.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import subprocess
import sys
import time

from aexp_relay_mcp import RelayClient
from aexp_relay_mcp.ops import OPS, BuildContext, NoArgs
from aexp_relay_mcp.remote import build_remote_command
from aexp_relay_mcp.sandbox import HOST_ALIAS, Sandbox


async def run(calls: int) -> dict[str, list[float]]:
    with Sandbox() as sb:
        client = RelayClient(config=sb.config(audit_log=None))
        await client.request("repo_status")  # starts the shared connection
        path = client.connections.live_options(HOST_ALIAS)[0].split("=", 1)[1]
        body = OPS["repo_status"].build(NoArgs(), BuildContext(str(sb.cluster), ("wandb",)))
        ours = build_remote_command(body, str(sb.cluster), "0123456789abcdef", timeout=60, grace=5)
        plain = f"cd {shlex.quote(str(sb.cluster))} && git status --porcelain=v2 --branch"
        variants = {
            "raw git status": plain,
            "raw status + log": plain + " && git log -1 --format=%H%x09%s",
            "raw timeout+sh status": f"exec timeout 65 sh -c {shlex.quote(plain)}",
            "raw, our remote command": ours,
        }
        times: dict[str, list[float]] = {name: [] for name in [*variants, "relay repo_status"]}
        ssh = ["ssh", "-n", "-T", "-F", str(sb.ssh_config), "-o", "ControlMaster=no",
               "-o", f"ControlPath={path}", "--", HOST_ALIAS]  # fmt: skip
        for _ in range(calls):
            for name, command in variants.items():
                start = time.perf_counter()
                proc = await asyncio.create_subprocess_exec(
                    *ssh, command, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                )  # fmt: skip
                await proc.communicate()
                times[name].append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            await client.request("repo_status")
            times["relay repo_status"].append((time.perf_counter() - start) * 1000)
        return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=25)
    args = parser.parse_args(argv)
    times = asyncio.run(run(args.calls))
    for name, values in times.items():
        print(f"{name:<26}{statistics.median(values):>8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
