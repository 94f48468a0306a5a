"""Every op at the sizes labs reach: its time next to raw git over the same connection, its
result's size against the budget, and whether every total is exact.

Sizes (issue 21), each on a fresh sandbox:

* 10,000 and 50,000 tracked files with long paths, all rewritten (a sweep's outputs):
  ``repo_status`` against raw ``git status --porcelain=v2 --branch -z``;
* 20,000 new branches with long names on origin: ``fetch`` against raw ``git fetch`` in a
  twin clone;
* 10,000 new upstream commits with long subjects: ``pull`` against raw ``git pull
  --ff-only`` in a twin clone;

then the lab of issue 16 (5,000 branches, 2,000 commits, 10,000 untracked files, a 2,000-run
sweep) through every op. "raw" runs over the same shared connection and login shell, without
the relay's markers, counters and time limit. Sizes are the whole MCP result (structuredContent
and its JSON text); the budget is ``model.budget.RESULT_CHARS``. Every total is compared with
git's own count; the script exits 1 if one differs or a result is over the budget.

    python benchmarks/bench_scale.py [--files 10000,50000] [--refs 20000] [--commits 10000]
                                     [--rounds 3] [--cap BYTES]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aexp_relay_mcp import RelayClient, RelayError
from aexp_relay_mcp.model.budget import RESULT_CHARS
from aexp_relay_mcp.model.results import RepoStatus
from aexp_relay_mcp.remote.quoting import quote
from aexp_relay_mcp.sandbox import Sandbox


def result_chars(value: Any) -> int:
    """What the MCP server sends for it: the JSON twice (structuredContent and text)."""
    if isinstance(value, RelayError):
        return len(json.dumps(value.to_dict(), ensure_ascii=False))  # errors: text only
    return 2 * len(json.dumps(value.model_dump(mode="json"), ensure_ascii=False))


async def raw(client: RelayClient, repo: Path, command: str) -> float:
    """Seconds for ``cd repo && command`` over the relay's own shared connection."""
    started = time.perf_counter()
    run = await client.transport.run(
        client.config.ssh_host or "", f"cd {quote(str(repo))} && {command}",
        deadline=time.monotonic() + 600,
    )  # fmt: skip
    assert run.result.exit_code == 0, run.result.stderr[-2000:]
    return time.perf_counter() - started


async def timed(work: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = await work()
    return time.perf_counter() - started, value


Row = tuple[str, float, float | None, int, str, bool]  # op, ms, raw ms, chars, totals, exact


async def changed_files(count: int, rounds: int, cap: int | None) -> Row:
    with Sandbox() as sb:
        sb.changed_tracked_files(count)
        client = RelayClient(config=sb.config(**({"output_cap": cap} if cap else {})))
        await client.request("repo_status")  # the connection, and the file cache, warm
        ours, theirs = [], []
        status: Any = None
        for i in range(rounds):
            order = ("ours", "raw") if i % 2 == 0 else ("raw", "ours")
            for which in order:
                if which == "ours":
                    seconds, status = await timed(lambda: client.request("repo_status"))
                    ours.append(seconds)
                else:
                    theirs.append(
                        await raw(client, sb.cluster, "git status --porcelain=v2 --branch -z")
                    )
        records = sb.git(sb.cluster, "status", "--porcelain=v2", "-z").split("\0")
        git_says = sum(r[:2] in ("1 ", "2 ") and r[3:4] == "M" for r in records)
    assert isinstance(status, RepoStatus)
    exact = status.unstaged_count == git_says == count
    totals = f"unstaged_count {status.unstaged_count} (git: {git_says})"
    return (
        f"repo_status, {count:,} files",
        statistics.median(ours),
        statistics.median(theirs),
        result_chars(status),
        totals,
        exact,
    )


async def in_a_twin(
    title: str,
    prepare: Callable[[Sandbox], object],
    op: str,
    raw_command: str,
    total: str,
    git_count: Callable[[Sandbox], int],
    expected: int,
    cap: int | None,
) -> Row:
    """An op that changes the checkout, once, next to raw git doing the same in a twin
    clone (made before ``prepare`` changed origin); ``total`` is checked against git."""
    with Sandbox() as sb:
        twin = sb.repos.clone(sb.remote_dir / "twin")
        prepare(sb)
        client = RelayClient(config=sb.config(**({"output_cap": cap} if cap else {})))
        await client.request("repo_status")
        seconds, value = await timed(lambda: client.request(op))
        raw_s = await raw(client, twin, raw_command)
        git_says = git_count(sb)
    got = getattr(value, total)
    return (
        title,
        seconds,
        raw_s,
        result_chars(value),
        f"{total} {got} (git: {git_says})",
        got == git_says == expected,
    )


async def new_branches(count: int, cap: int | None) -> Row:
    return await in_a_twin(
        f"fetch, {count:,} new branches",
        lambda sb: sb.new_branches(count, long=True),
        "fetch",
        "git fetch -q --prune --all",
        "new_count",
        lambda sb: len(sb.git(sb.cluster, "for-each-ref", "refs/remotes/origin/ci").splitlines()),
        count,
        cap,
    )


async def upstream_commits(count: int, cap: int | None) -> Row:
    return await in_a_twin(
        f"pull, {count:,} commits",
        lambda sb: sb.upstream_commits(count, subject_chars=400),
        "pull",
        "git pull -q --ff-only",
        "commit_count",
        lambda sb: int(sb.git(sb.cluster, "rev-list", "--count", "HEAD@{1}..HEAD").strip()),
        count,
        cap,
    )


async def the_lab(client: RelayClient) -> list[Row]:
    """Every op once, as the agent calls them, on the lab of issue 16."""
    rows: list[Row] = []
    steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("status", lambda: client.check_connection()),
        ("repo_status", lambda: client.request("repo_status")),
        ("fetch", lambda: client.request("fetch")),
        ("pull", lambda: client.request("pull")),
        ("rebase", lambda: client.request("rebase")),
        ("wandb_sync (preview)", lambda: client.request("wandb_sync")),
        ("wandb_sync (a page)", lambda: client.request("wandb_sync", approve=True)),
        ("push", lambda: client.request("push")),
    ]
    await client.check_connection()
    for name, run in steps:
        started = time.perf_counter()
        try:
            value = await run()
        except RelayError as exc:
            value = exc
        seconds = time.perf_counter() - started
        if isinstance(value, RelayError):
            preview = getattr(value, "preview", None)
            totals = value.kind + (
                f", selected_count {preview.selected_count}" if preview is not None else ""
            )
        else:
            data = value.model_dump()
            keys = [k for k in data if k.endswith("_count") or k in ("ahead", "behind")]
            totals = ", ".join(f"{k} {data[k]}" for k in keys)
        rows.append((f"lab: {name}", seconds, None, result_chars(value), totals, True))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", default="10000,50000")
    parser.add_argument("--refs", type=int, default=20000)
    parser.add_argument("--commits", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cap", type=int, default=None, help="AEXP_RELAY_OUTPUT_CAP to use")
    opts = parser.parse_args()
    rows: list[Row] = []
    for count in (int(n) for n in opts.files.split(",") if n):
        rows.append(asyncio.run(changed_files(count, opts.rounds, opts.cap)))
    rows.append(asyncio.run(new_branches(opts.refs, opts.cap)))
    rows.append(asyncio.run(upstream_commits(opts.commits, opts.cap)))
    with Sandbox() as sb:
        made = sb.at_lab_scale()
        rows += asyncio.run(the_lab(RelayClient(config=sb.config())))
    cap = f"output cap {opts.cap} bytes" if opts.cap else "default output cap"
    print(f"budget {RESULT_CHARS} characters a result; {cap}; lab: {made}")
    print(f"{'op':<32}{'ms':>8}{'raw ms':>8}{'ratio':>7}{'chars':>8}  totals")
    ok = True
    for name, seconds, raw_s, chars, totals, exact in rows:
        ratio = f"{seconds / raw_s:7.2f}" if raw_s else f"{'-':>7}"
        raw_ms = f"{raw_s * 1000:8.0f}" if raw_s else f"{'-':>8}"
        flag = "" if exact else "  NOT EXACT"
        over = "" if chars <= RESULT_CHARS else "  OVER BUDGET"
        print(f"{name:<32}{seconds * 1000:8.0f}{raw_ms}{ratio}{chars:8d}  {totals}{flag}{over}")
        ok = ok and exact and chars <= RESULT_CHARS
    print("every total exact and every result within the budget" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
