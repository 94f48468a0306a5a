"""Where a warm `repo_status` spends its time, piece by piece, over one shared connection.

    python benchmarks/breakdown_repo_status.py [--calls 30]

Interleaved, medians. Each row adds one piece to the one above it, so the differences
between neighbours are the cost of each piece:

1. the session alone: the native mux client runs `true` (no git)
2. raw `git status`, native session (what the command costs on the login node)
2b. the same status counted on the login node (`| tr | awk`: exact totals at any size)
3. raw `git status` through a spawned `ssh -o ControlPath=...` (the raw-ssh baseline)
4. our whole remote command (markers, `timeout`, `sh`, the HEAD subject), native session,
   as a POSIX login shell reads it
4b. the same through the login-shell line every shell reads alike (base64, `/bin/sh`)
5. the relay's `request("repo_status")` (validation, audit lines, parsing, the result)
6. an MCP `tools/call` over stdio, raw JSON-RPC with a progress token
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_relay import JsonRpcServer

from aexp_relay_mcp import RelayClient
from aexp_relay_mcp.remote.counting import counted_status
from aexp_relay_mcp.remote.ops import OPS, BuildContext, NoArgs
from aexp_relay_mcp.remote.script import build_remote_command
from aexp_relay_mcp.sandbox import HOST_ALIAS, Sandbox
from aexp_relay_mcp.ssh.login_shell import for_login_shell
from aexp_relay_mcp.ssh.mux import run_session


async def run(calls: int) -> dict[str, list[float]]:
    with Sandbox() as sb:
        client = RelayClient(config=sb.config())
        await client.request("repo_status")  # starts the shared connection
        path = client.connections.live_path(HOST_ALIAS)
        assert path is not None
        body = OPS["repo_status"].build(NoArgs(), BuildContext(str(sb.cluster), ("wandb",)))
        ours = build_remote_command(body, str(sb.cluster), "0123456789abcdef", timeout=60, grace=5)
        plain = f"cd {shlex.quote(str(sb.cluster))} && git status --porcelain=v2 --branch"
        status = "git status --porcelain=v2 --branch"
        counted = f"cd {shlex.quote(str(sb.cluster))} && {counted_status(status)}"
        server = JsonRpcServer(sb.env())
        await server.start()
        await server.tool("airgapped_repo_status")

        async def session(command: str) -> None:
            await run_session(path, command, timeout=30, output_cap=1 << 20)

        async def spawned() -> None:
            proc = await asyncio.create_subprocess_exec(
                "ssh", "-n", "-T", "-F", str(sb.ssh_config), "-o", "ControlMaster=no",
                "-o", f"ControlPath={path}", "--", HOST_ALIAS, plain,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            await proc.communicate()

        async def relay() -> None:
            await client.request("repo_status")

        async def mcp() -> None:
            await server.tool("airgapped_repo_status")

        cases = {
            "1 session, `true`": lambda: session("true"),
            "2 + git status (native)": lambda: session(plain),
            "2b git status, counted there": lambda: session(counted),
            "3 git status, spawned ssh": spawned,
            "4 our remote command (native)": lambda: session(ours),
            "4b + the login-shell line": lambda: session(for_login_shell(ours)),
            "5 relay request()": relay,
            "6 MCP tools/call": mcp,
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(calls):
            for name, case in cases.items():
                start = time.perf_counter()
                await case()
                times[name].append((time.perf_counter() - start) * 1000)
        await server.close()
        return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args(argv)
    times = asyncio.run(run(args.calls))
    previous = None
    print(f"{'piece':<34}{'median ms':>10}{'+ over the row above':>22}")
    for name, values in times.items():
        median = statistics.median(values)
        delta = "" if previous is None else f"{median - previous:+.1f}"
        print(f"{name:<34}{median:>10.1f}{delta:>22}")
        previous = median
    return 0


if __name__ == "__main__":
    sys.exit(main())
