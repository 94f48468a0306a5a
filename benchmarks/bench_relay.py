"""Relay speed against the sandbox, side by side with raw ssh, in one run.

    python benchmarks/bench_relay.py [--calls 20] [--json benchmarks/results/latest.json]

Latency cases run interleaved (round-robin), so machine noise hits each case alike; the
table shows medians, and the ratios that matter are printed against their targets.
When run as root, the sandbox logs in a dedicated user with an empty home, so no rc
file adds its own latency to the remote commands.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
HERE = Path(__file__).parent
BIN = Path(sys.executable).parent

TARGETS = {
    "relay warm / raw multiplexed": ("<=", 1.3),
    "relay warm / raw fresh": ("<=", 0.1),
    "MCP call - relay warm (ms)": ("<=", 5.0),
    "8 concurrent / single": ("<=", 2.5),
    "logins per 20 ops": ("<=", 1),
    "cold start / minimal MCPServer": ("<=", 1.15),
    "CLI start (ms)": ("<=", 150.0),
    "RSS growth, 200 MB output (MB)": ("<=", 30.0),
}

MINIMAL_SERVER = """
from mcp.server.mcpserver import MCPServer
server = MCPServer("minimal")
@server.tool()
async def ping() -> str:
    return "pong"
server.run("stdio")
"""

RSS_PROBE = """
import asyncio, json, resource, sys
from aexp_relay_mcp import RelayClient, RelayConfig
config = RelayConfig.from_env()
client = RelayClient(config=config)
async def main():
    await client.request("repo_status")          # warm up imports and the connection
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = await client.request("wandb_sync", {"runs": [sys.argv[1]]}, approve=True)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_kb": before, "after_kb": after, "tail": len(result.output_tail)}))
asyncio.run(main())
"""


def ssh_argv(sb: Sandbox, *options: str) -> list[str]:
    command = f"cd {shlex.quote(str(sb.cluster))} && git status --porcelain=v2 --branch"
    return ["ssh", "-n", "-F", str(sb.ssh_config), *options, HOST_ALIAS, command]


def raw(argv: list[str]) -> Case:
    async def run() -> None:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        await proc.communicate()
        assert proc.returncode == 0

    return run


def relay(client: RelayClient) -> Case:
    async def run() -> None:
        await client.request("repo_status")

    return run


async def interleaved(cases: dict[str, Case], calls: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in cases}
    for case in cases.values():  # warm-up: imports, masters, caches
        await case()
    for _ in range(calls):
        for name, case in cases.items():
            start = time.perf_counter()
            await case()
            times[name].append((time.perf_counter() - start) * 1000)
    return times


async def latency(sb: Sandbox, calls: int) -> dict[str, list[float]]:
    raw_socket = sb.root / "raw-cm"
    subprocess.run(
        ["ssh", "-F", str(sb.ssh_config), "-fNM", "-o", f"ControlPath={raw_socket}",
         "-o", "ControlPersist=300", HOST_ALIAS],
        check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    warm = RelayClient(config=sb.config(audit_log=None))
    cold = RelayClient(config=sb.config(audit_log=None, control_persist="no"))
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "aexp_relay_mcp", "serve"], env=sb.env()
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()

        async def mcp_call() -> None:
            result = await session.call_tool("airgapped_repo_status", {})
            assert not result.is_error

        async def eight() -> None:
            await asyncio.gather(*(warm.request("repo_status") for _ in range(8)))

        raw_mux = raw(ssh_argv(sb, "-o", f"ControlPath={raw_socket}"))

        async def eight_raw() -> None:
            await asyncio.gather(*(raw_mux() for _ in range(8)))

        cases = {
            "raw fresh": raw(ssh_argv(sb)),
            "raw multiplexed": raw_mux,
            "relay, no reuse": relay(cold),
            "relay, warm": relay(warm),
            "MCP tool call": mcp_call,
            "8 concurrent (batch)": eight,
            "raw mux, 8 concurrent": eight_raw,
        }
        return await interleaved(cases, calls)


def logins_per_20(sb: Sandbox) -> int:
    sb.stop_masters()
    time.sleep(0.5)
    client = RelayClient(config=sb.config(audit_log=None, control_dir=str(sb.root / "cm20")))
    before = sb.logins()

    async def twenty() -> None:
        for _ in range(20):
            await client.request("repo_status")

    asyncio.run(twenty())
    return sb.logins() - before


async def spawn_to_tools_list(command: str, args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    params = StdioServerParameters(command=command, args=args, env=env)
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        await session.list_tools()
        elapsed = (time.perf_counter() - start) * 1000
    return elapsed


def cold_start(sb: Sandbox, rounds: int) -> dict[str, list[float]]:
    minimal = sb.root / "minimal_server.py"
    minimal.write_text(MINIMAL_SERVER)
    out: dict[str, list[float]] = {"cold start, relay": [], "cold start, minimal": []}
    for _ in range(rounds):
        out["cold start, relay"].append(
            asyncio.run(
                spawn_to_tools_list(sys.executable, ["-m", "aexp_relay_mcp", "serve"], sb.env())
            )
        )
        out["cold start, minimal"].append(
            asyncio.run(spawn_to_tools_list(sys.executable, [str(minimal)], {}))
        )
    return out


def cli_start(rounds: int) -> list[float]:
    exe = BIN / "aexp-relay-mcp"
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "aexp_relay_mcp"]
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run([*argv, "status", "--help"], stdout=subprocess.DEVNULL, check=True)
        times.append((time.perf_counter() - start) * 1000)
    return times


def rss_growth(sb: Sandbox) -> float:
    """Peak RSS growth of a relay process while the remote prints 200 MB."""
    name = "offline-run-20260101_120000-run0"
    flood = "sh -c 'head -c 200000000 /dev/zero | tr \"\\000\" x; echo'"
    env = {**os.environ, **sb.env(), "AEXP_RELAY_WANDB": flood, "AEXP_RELAY_TIMEOUT": "120"}
    proc = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, name],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return float((data["after_kb"] - data["before_kb"]) / 1024)


def verdict(name: str, value: float) -> str:
    if name not in TARGETS:
        return "context, no target"
    op, target = TARGETS[name]
    met = value <= target if op == "<=" else value >= target
    return f"{'met' if met else 'MISSED'} (target {op} {target:g})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--cold-rounds", type=int, default=8)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "latest.json")
    args = parser.parse_args(argv)
    with Sandbox() as sb:
        times = asyncio.run(latency(sb, args.calls))
        logins = logins_per_20(sb)
        times.update(cold_start(sb, args.cold_rounds))
        times["CLI start"] = cli_start(args.calls)
        rss = rss_growth(sb)
        user = sb.user.name
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"aexp-relay-mcp benchmark: sandbox sshd on loopback, login user {user}, "
          f"n={args.calls} (cold start n={args.cold_rounds})\n")  # fmt: skip
    print(f"{'case':<26}{'median ms':>11}{'min':>9}{'max':>9}")
    for name, t in times.items():
        print(f"{name:<26}{med[name]:>11.1f}{min(t):>9.1f}{max(t):>9.1f}")
    ratios = {
        "relay warm / raw multiplexed": med["relay, warm"] / med["raw multiplexed"],
        "relay warm / raw fresh": med["relay, warm"] / med["raw fresh"],
        "MCP call - relay warm (ms)": med["MCP tool call"] - med["relay, warm"],
        "8 concurrent / single": med["8 concurrent (batch)"] / med["relay, warm"],
        "(raw mux: 8 concurrent / single)": med["raw mux, 8 concurrent"] / med["raw multiplexed"],
        "logins per 20 ops": float(logins),
        "cold start / minimal MCPServer": med["cold start, relay"] / med["cold start, minimal"],
        "CLI start (ms)": med["CLI start"],
        "RSS growth, 200 MB output (MB)": rss,
    }
    print(f"\n{'measure':<34}{'value':>10}   verdict")
    for name, value in ratios.items():
        print(f"{name:<34}{value:>10.2f}   {verdict(name, value)}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "medians_ms": med,
                "measures": ratios,
                "login_user": user,
            },
            indent=2,
        )
    )
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
