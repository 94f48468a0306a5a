"""Relay speed against the sandbox, side by side with raw ssh, in one run.

    python benchmarks/bench_relay.py [--calls 30] [--json benchmarks/results/latest.json]

Latency cases run interleaved (round-robin), so machine noise hits each case alike; the
tables show medians, and every target of issue #11 is printed as met or missed.

The MCP server is driven the way Claude Code drives it: raw JSON-RPC lines over stdio,
a progressToken on every call, several calls in flight at once. The SDK's own client is
measured too, as context (it validates results against the output schema itself).
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
from typing import Any

from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from aexp_relay_mcp import RelayClient
from aexp_relay_mcp.sandbox import HOST_ALIAS, Sandbox
from aexp_relay_mcp.ssh.procs import process_table

Case = Callable[[], Awaitable[None]]
HERE = Path(__file__).parent
BIN = Path(sys.executable).parent
HANG = "sleep 61"

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


# --------------------------------------------------------------------------- drivers


class JsonRpcServer:
    """`aexp-relay-mcp serve` driven with raw JSON-RPC lines, many calls in flight."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.next_id = 0
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "aexp_relay_mcp", "serve",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={**os.environ, **self.env},
        )  # fmt: skip
        self.reader = asyncio.ensure_future(self._read())
        await self.request("initialize", {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "bench", "version": "0"},
        })  # fmt: skip
        self.notify("notifications/initialized", {})

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            message = json.loads(line)
            future = self.waiting.pop(message.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(message)

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(message) + "\n").encode())

    def notify(self, method: str, params: dict[str, Any]) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def send(self, method: str, params: dict[str, Any]) -> tuple[int, asyncio.Future[Any]]:
        self.next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[self.next_id] = future
        self._send({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        return self.next_id, future

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        _, future = self.send(method, params)
        return await future  # type: ignore[no-any-return]

    def call(self, tool: str, args: dict[str, Any]) -> tuple[int, asyncio.Future[Any]]:
        """A tools/call as Claude Code sends it: with a progress token."""
        params = {"name": tool, "arguments": args, "_meta": {"progressToken": self.next_id + 1}}
        return self.send("tools/call", params)

    async def tool(self, tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        _, future = self.call(tool, args or {})
        message = await future
        result: dict[str, Any] = message["result"]
        return result

    async def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.proc.wait()
        self.reader.cancel()


def raw_argv(sb: Sandbox, *options: str) -> list[str]:
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


def start_raw_master(sb: Sandbox, socket: Path) -> None:
    subprocess.run(
        ["ssh", "-F", str(sb.ssh_config), "-fNM", "-o", f"ControlPath={socket}",
         "-o", "ControlPersist=600", HOST_ALIAS],
        check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


# --------------------------------------------------------------------------- cases


async def latency(sb: Sandbox, calls: int) -> dict[str, list[float]]:
    raw_socket = sb.root / "raw-cm"
    start_raw_master(sb, raw_socket)
    raw_mux = raw(raw_argv(sb, "-o", f"ControlPath={raw_socket}"))
    native = RelayClient(config=sb.config(audit_log=None))
    spawned = RelayClient(config=sb.config(audit_log=None, mux_client="ssh"))
    fresh = RelayClient(config=sb.config(audit_log=None, control_persist="no"))
    server = JsonRpcServer(sb.env())
    await server.start()
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "aexp_relay_mcp", "serve"], env=sb.env()
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()

        async def mcp_call() -> None:
            result = await server.tool("airgapped_repo_status")
            assert not result.get("isError"), result

        async def sdk_call() -> None:
            result = await session.call_tool("airgapped_repo_status", {})
            assert not result.is_error

        async def mcp_eight() -> None:
            await asyncio.gather(*(mcp_call() for _ in range(8)))

        async def raw_eight() -> None:
            await asyncio.gather(*(raw_mux() for _ in range(8)))

        async def native_call() -> None:
            await native.request("repo_status")

        async def spawned_call() -> None:
            await spawned.request("repo_status")

        async def fresh_call() -> None:
            await fresh.request("repo_status")

        cases = {
            "raw multiplexed ssh": raw_mux,
            "MCP tools/call (JSON-RPC)": mcp_call,
            "MCP tools/call (SDK client)": sdk_call,
            "relay, native mux": native_call,
            "relay, ssh client per call": spawned_call,
            "8 at once, MCP": mcp_eight,
            "8 at once, raw mux ssh": raw_eight,
        }
        times = await interleaved(cases, calls)
        times.update(
            await interleaved(
                {"raw fresh ssh": raw(raw_argv(sb)), "relay, fresh login": fresh_call},
                max(5, calls // 4),
            )
        )
        times.update(await sixteen_callers(server, raw_mux, rounds=max(3, calls // 6)))
    await server.close()
    return times


async def sixteen_callers(
    server: JsonRpcServer, raw_mux: Case, rounds: int
) -> dict[str, list[float]]:
    """Per-call latency with 16 callers at once: each call timed on its own."""

    async def timed(case: Case) -> float:
        start = time.perf_counter()
        await case()
        return (time.perf_counter() - start) * 1000

    async def mcp() -> None:
        await server.tool("airgapped_repo_status")

    out: dict[str, list[float]] = {
        "16 callers, MCP, per call": [],
        "16 callers, raw mux, per call": [],
    }
    for _ in range(rounds):
        out["16 callers, MCP, per call"] += await asyncio.gather(*(timed(mcp) for _ in range(16)))
        out["16 callers, raw mux, per call"] += await asyncio.gather(
            *(timed(raw_mux) for _ in range(16))
        )
    return out


def remote_hang_pids() -> list[int]:
    return [p.pid for p in process_table() if p.state != "Z" and HANG in p.cmdline]


async def hang_paths(sb: Sandbox, rounds: int, timeout_s: float) -> dict[str, list[float]]:
    """A call with timeout T on a hanging remote command, and a cancel mid-call."""
    sb.git(sb.cluster, "config", "remote.origin.uploadpack", f"{HANG}; git-upload-pack")
    server = JsonRpcServer(sb.env())
    await server.start()
    out: dict[str, list[float]] = {
        "timeout: returned after T": [],
        "timeout: group left at return": [],
        "cancel notice -> remote group gone": [],
    }
    try:
        await server.tool("airgapped_repo_status")  # the master is up
        for _ in range(rounds):
            start = time.perf_counter()
            result = await server.tool("airgapped_fetch", {"timeout": timeout_s})
            took = time.perf_counter() - start
            assert result.get("isError") and '"timeout"' in result["content"][0]["text"], result
            out["timeout: returned after T"].append((took - timeout_s) * 1000)
            out["timeout: group left at return"].append(float(len(remote_hang_pids())))
            await wait_gone()

            rid, future = server.call("airgapped_fetch", {})
            while not remote_hang_pids():
                await asyncio.sleep(0.002)
            start = time.perf_counter()
            server.notify("notifications/cancelled", {"requestId": rid, "reason": "bench"})
            await wait_gone()
            out["cancel notice -> remote group gone"].append((time.perf_counter() - start) * 1000)
            future.cancel()
    finally:
        await server.close()
        sb.git(sb.cluster, "config", "--unset", "remote.origin.uploadpack")
    return out


async def wait_gone(limit_s: float = 10.0) -> None:
    deadline = time.perf_counter() + limit_s
    while remote_hang_pids() and time.perf_counter() < deadline:
        await asyncio.sleep(0.002)


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
    """Spawn to tools/list answered, the relay against a one-tool MCPServer. The two take
    turns going first (ABBA), so the machine's drift and caches hit both alike."""
    minimal = sb.root / "minimal_server.py"
    minimal.write_text(MINIMAL_SERVER)
    relay = (sys.executable, ["-m", "aexp_relay_mcp", "serve"], sb.env())
    plain = (sys.executable, [str(minimal)], {})
    out: dict[str, list[float]] = {"cold start, relay": [], "cold start, minimal": []}
    for i in range(rounds):
        order = [("cold start, relay", relay), ("cold start, minimal", plain)]
        for name, (command, args, env) in order if i % 2 == 0 else reversed(order):
            out[name].append(asyncio.run(spawn_to_tools_list(command, args, env)))
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
        [sys.executable, "-c", RSS_PROBE, name], env=env, capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return float((data["after_kb"] - data["before_kb"]) / 1024)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --------------------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--cold-rounds", type=int, default=16)
    parser.add_argument("--hang-rounds", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=2.0, help="T for the hang case")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "latest.json")
    args = parser.parse_args(argv)
    with Sandbox() as sb:
        times = asyncio.run(latency(sb, args.calls))
        times.update(asyncio.run(hang_paths(sb, args.hang_rounds, args.timeout)))
        logins = logins_per_20(sb)
        times.update(cold_start(sb, args.cold_rounds))
        times["CLI start"] = cli_start(args.calls)
        rss = rss_growth(sb)
        user = sb.user.name
    med = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"aexp-relay-mcp benchmark: sandbox sshd on loopback, login user {user}, n={args.calls} "
        f"interleaved (cold start n={args.cold_rounds}, hang paths n={args.hang_rounds})\n"
    )
    print(f"{'case':<36}{'median ms':>11}{'min':>9}{'max':>9}")
    for name, t in times.items():
        if name.endswith("at return"):
            continue
        print(f"{name:<36}{med[name]:>11.1f}{min(t):>9.1f}{max(t):>9.1f}")

    mcp16, raw16 = times["16 callers, MCP, per call"], times["16 callers, raw mux, per call"]
    left = times["timeout: group left at return"]
    rows: list[tuple[str, str, str, bool | None]] = [
        (
            "MCP tools/call repo_status / raw mux ssh",
            f"{med['MCP tools/call (JSON-RPC)'] / med['raw multiplexed ssh']:.2f}",
            "<= 1.3",
            med["MCP tools/call (JSON-RPC)"] / med["raw multiplexed ssh"] <= 1.3,
        ),
        (
            "8 at once: MCP / raw mux ssh",
            f"{med['8 at once, MCP'] / med['8 at once, raw mux ssh']:.2f}",
            "<= 1.2 (best peer 0.89-1.41)",
            med["8 at once, MCP"] / med["8 at once, raw mux ssh"] <= 1.2,
        ),
        (
            f"timeout T={args.timeout:g}: returns after T + (ms)",
            f"{med['timeout: returned after T']:.0f} (max "
            f"{max(times['timeout: returned after T']):.0f}), group left: {int(max(left))}",
            "<= 500, group gone",
            max(times["timeout: returned after T"]) <= 500 and max(left) == 0,
        ),
        (
            "cancel notice -> remote group gone (ms)",
            f"{med['cancel notice -> remote group gone']:.0f} (max "
            f"{max(times['cancel notice -> remote group gone']):.0f})",
            "<= 300",
            max(times["cancel notice -> remote group gone"]) <= 300,
        ),
        (
            "cold start / minimal MCPServer",
            f"{med['cold start, relay'] / med['cold start, minimal']:.2f}",
            "<= 1.15",
            med["cold start, relay"] / med["cold start, minimal"] <= 1.15,
        ),
        (
            "16 callers, per call: MCP / raw mux",
            f"p50 {statistics.median(mcp16) / statistics.median(raw16):.2f}, p95 "
            f"{percentile(mcp16, 0.95) / percentile(raw16, 0.95):.2f}",
            "report",
            None,
        ),
        (
            "(context) SDK client call / raw mux ssh",
            f"{med['MCP tools/call (SDK client)'] / med['raw multiplexed ssh']:.2f}",
            "",
            None,
        ),
        (
            "(context) relay native / ssh client per call",
            f"{med['relay, native mux'] / med['relay, ssh client per call']:.2f}",
            "",
            None,
        ),
        ("logins per 20 ops", str(logins), "1", logins == 1),
        ("CLI start (ms)", f"{med['CLI start']:.0f}", "<= 150", med["CLI start"] <= 150),
        ("RSS growth, 200 MB output (MB)", f"{rss:.1f}", "<= 30", rss <= 30),
    ]
    print(f"\n{'measure':<44}{'value':<34}{'target':<30}verdict")
    for name, value, target, met in rows:
        verdict = "" if met is None else ("met" if met else "MISSED")
        print(f"{name:<44}{value:<34}{target:<30}{verdict}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "medians_ms": med,
                "measures": {name: value for name, value, _, _ in rows},
                "login_user": user,
            },
            indent=2,
        )
    )
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
