"""Every op at a busy lab's size: its time, and its result's size against the budget.

The sandbox gets 5,000 new branches on origin, 2,000 new upstream commits, 10,000 changed
files in the checkout and a 2,000-run sweep (`Sandbox.at_lab_scale`); then each op runs
once, as the agent would call it. Sizes are the whole MCP result (structuredContent and
its JSON text); the budget is `model.budget.RESULT_CHARS`.

    python benchmarks/bench_scale.py [--refs 5000] [--runs 2000] [--files 10000] [--commits 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aexp_relay_mcp import RelayClient, RelayError
from aexp_relay_mcp.model.budget import RESULT_CHARS
from aexp_relay_mcp.sandbox import Sandbox


def result_chars(value: Any) -> int:
    """What the MCP server sends for it: the JSON twice (structuredContent and text)."""
    if isinstance(value, RelayError):
        return len(json.dumps(value.to_dict(), ensure_ascii=False))  # errors: text only
    return 2 * len(json.dumps(value.model_dump(mode="json"), ensure_ascii=False))


LIMIT = {"limit": 100}


async def sweep(client: RelayClient) -> list[tuple[str, float, Any]]:
    rows = []
    steps: list[tuple[str, Any]] = [
        ("status", lambda: client.check_connection()),
        ("repo_status", lambda: client.request("repo_status")),
        ("fetch", lambda: client.request("fetch")),
        ("pull", lambda: client.request("pull")),
        ("rebase", lambda: client.request("rebase")),
        ("wandb_sync (preview)", lambda: client.request("wandb_sync")),
        (
            "wandb_sync (100 runs)",
            lambda: client.request("wandb_sync", {"limit": 100}, approve=True),
        ),
        ("push", lambda: client.request("push")),
    ]
    await client.check_connection()  # the shared connection, once
    for name, run in steps:
        started = time.perf_counter()
        try:
            value = await run()
        except RelayError as exc:
            value = exc
        rows.append((name, time.perf_counter() - started, value))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refs", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--commits", type=int, default=2000)
    args = parser.parse_args()
    with Sandbox() as sb:
        made = sb.at_lab_scale(
            refs=args.refs, runs=args.runs, files=args.files, commits=args.commits
        )
        rows = asyncio.run(sweep(RelayClient(config=sb.config())))
    print(f"lab scale: {made}; budget {RESULT_CHARS} characters a result")
    print(f"{'op':<22}{'ms':>9}{'chars':>9}  totals")
    worst = 0
    for name, seconds, value in rows:
        chars = result_chars(value)
        worst = max(worst, chars)
        if isinstance(value, RelayError):
            shown = getattr(getattr(value, "preview", None), "run_count", None)
            totals = f"{value.kind}" + (f", run_count {shown}" if shown is not None else "")
        else:
            data = value.model_dump()
            keys = [k for k in data if k.endswith("_count") or k in ("ahead", "behind")]
            totals = ", ".join(f"{k} {data[k]}" for k in keys)
        print(f"{name:<22}{seconds * 1000:9.0f}{chars:9d}  {totals}")
    print(
        f"largest result: {worst} characters ({'within' if worst <= RESULT_CHARS else 'OVER'} "
        f"the budget)"
    )
    return 0 if worst <= RESULT_CHARS else 1


if __name__ == "__main__":
    sys.exit(main())
