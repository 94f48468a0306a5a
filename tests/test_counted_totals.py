"""Totals never depend on the output cap: every list with a total is counted on the login
node (``remote.counting``), and a parser takes a total only from that count.

These run the counters' real shell (sh, tr, awk, sort) on made-up git output, then cut it
the way the output cap does, and parse it as the relay does.
"""

from __future__ import annotations

import fnmatch
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aexp_relay_mcp.model.text import ELISION
from aexp_relay_mcp.remote.counting import (
    LIST_BYTES,
    PAGE_NAME_CHARS,
    PAGE_RUNS,
    counted,
    counted_names,
    counted_status,
    moved_refs,
    parse_selected_runs,
    selected_runs,
    whole,
)
from aexp_relay_mcp.remote.ops import WandbSyncArgs
from aexp_relay_mcp.remote.output import Section, UnparseableOutput
from aexp_relay_mcp.remote.parsing import glob_to_ere, parse_moved_refs, parse_status_records
from aexp_relay_mcp.remote.quoting import quote
from aexp_relay_mcp.ssh.runner import CappedBuffer

SHA1, SHA2 = "a" * 40, "b" * 40


def printing(text: str) -> str:
    """Shell that prints text (from a file: a sweep is more than a command line holds)."""
    with tempfile.NamedTemporaryFile("w", prefix="aexp-count-", delete=False) as fh:
        fh.write(text)
    return f"cat {quote(fh.name)}"


def run_sh(script: str) -> tuple[str, int]:
    proc = subprocess.run(
        ["sh", "-c", script], capture_output=True, env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"}
    )
    return proc.stdout.decode(), proc.returncode


def section(name: str, text: str) -> Section:
    return Section(name, 0, text, "")


def capped(text: str, cap: int) -> str:
    """The text as the relay keeps it under an output cap of ``cap`` bytes."""
    buffer = CappedBuffer(cap)
    buffer.feed(text.encode())
    return buffer.text()


def status_records(n: int, path_len: int = 10) -> list[str]:
    """git status lines: the branch, then n entries of each kind (renames with their source
    after a tab), paths of about path_len characters; one with a newline in it, C-quoted as
    git prints it."""
    long = "d/" * (path_len // 2)
    records = [f"# branch.oid {SHA1}", "# branch.head main", "# branch.ab +1 -2"]
    for i in range(n):
        records += [
            f"1 M. N... 100644 100644 100644 {SHA1} {SHA1} {long}staged-{i}",
            f"1 .M N... 100644 100644 100644 {SHA1} {SHA1} {long}unstaged {i}",
            f"1 MM N... 100644 100644 100644 {SHA1} {SHA1} {long}both-{i}",
            f"2 R. N... 100644 100644 100644 {SHA1} {SHA1} R100 {long}new-{i}\t{long}old-{i}",
            f"u UU N... 100644 100644 100644 100644 {SHA1} {SHA1} {SHA1} {long}conflict-{i}",
            f'? "{long}untracked\\nline-{i}"',
        ]
    return records


def count_status(records: list[str], tmp_path: Path, exit_code: int = 0) -> tuple[str, int]:
    data = tmp_path / "status.txt"
    data.write_bytes(("\n".join(records) + "\n").encode())
    fake_git = f"( cat {quote(str(data))}; exit {exit_code} )"
    return run_sh(counted_status(fake_git))


# ------------------------------------------------------------------ the status


def test_status_counter_counts_every_kind_and_prints_the_first(tmp_path: Path) -> None:
    text, code = count_status(status_records(3), tmp_path)
    found = counted(section("status", text), 4)
    parsed = parse_status_records(found.records, found.totals)  # type: ignore[arg-type]
    # staged: M., MM, R. (x3); unstaged: .M, MM (x3); untracked, conflicted: 3 each
    assert parsed.counts == (9, 6, 3, 3) and code == 0
    assert (parsed.state.branch, parsed.state.ahead, parsed.state.behind) == ("main", 1, 2)
    assert (
        parsed.staged[2].path.endswith("new-0") and parsed.staged[2].orig_path == "d/d/d/d/d/old-0"
    )
    assert parsed.untracked[0] == "d/d/d/d/d/untracked\\x0aline-0"  # the newline came back
    assert not parsed.truncated


def test_status_counter_prints_at_most_cap_of_a_kind_and_counts_all(tmp_path: Path) -> None:
    text, _ = count_status(status_records(500), tmp_path)
    found = counted(section("status", text), 4)
    parsed = parse_status_records(found.records, found.totals)  # type: ignore[arg-type]
    assert parsed.counts == (1500, 1000, 500, 500)
    shown = (parsed.staged, parsed.unstaged, parsed.untracked, parsed.conflicted)
    assert all(0 < len(entries) <= 200 for entries in shown) and parsed.truncated


def test_status_counter_bounds_its_output_whatever_the_path_lengths(tmp_path: Path) -> None:
    text, _ = count_status(status_records(300, path_len=900), tmp_path)
    assert len(text) < LIST_BYTES + 5_000  # a page of long paths, not megabytes
    found = counted(section("status", text), 4)
    assert found.totals == (900, 600, 300, 300)


def test_status_counter_fails_with_no_count_when_git_failed(tmp_path: Path) -> None:
    """git prints nothing but its reason (on stderr): the step fails, and no total of zero
    is ever read from it."""
    text, code = count_status([], tmp_path, exit_code=128)
    assert code != 0
    with pytest.raises(UnparseableOutput, match="count"):
        counted(section("status", text), 4)


# ------------------------------------------------------------------ refs a fetch moved


def refs_listing(tag: str, refs: dict[str, str]) -> str:
    return printing("".join(f"{tag} {sha} {ref}\n" for ref, sha in refs.items()))


def test_refs_that_moved_are_counted_and_the_upstream_comes_first() -> None:
    before = {
        "refs/remotes/origin/main": SHA1,
        "refs/remotes/origin/gone": SHA1,
        "refs/remotes/origin/HEAD": SHA1,
        "refs/remotes/fork/main": SHA1,
    }
    after = {
        "refs/remotes/origin/main": SHA2,
        "refs/remotes/origin/HEAD": SHA2,
        "refs/remotes/fork/main": SHA2,
        "refs/remotes/fork/a-new": SHA2,
        "refs/remotes/origin/zz-new": SHA2,
    }
    up = "_up=refs/remotes/origin/main; _upre=refs/remotes/origin/; "
    text, _ = run_sh(up + moved_refs(refs_listing("B", before), refs_listing("A", after)))
    found = counted(section("moved", text), 3, prefix="0 ")
    moved = [(u.ref, u.change) for u in parse_moved_refs(found.records)]
    assert found.totals == (2, 2, 1)  # new, updated, deleted; HEAD is no branch
    assert moved == [
        ("origin/main", "updated"),
        ("origin/gone", "deleted"),
        ("origin/zz-new", "new"),
        ("fork/a-new", "new"),
        ("fork/main", "updated"),
    ]


def test_twenty_thousand_new_refs_are_counted_exactly_and_a_few_printed() -> None:
    after = {f"refs/remotes/origin/ci/{'long-name-' * 8}{i:05d}": SHA2 for i in range(20_000)}
    text, _ = run_sh(moved_refs("true", refs_listing("A", after), cap=50))
    found = counted(section("moved", text), 3, prefix="0 ")
    assert found.totals == (20_000, 0, 0) and len(parse_moved_refs(found.records)) == 50


# ------------------------------------------------------------------ names (conflicts)


def test_names_are_counted_and_the_first_printed() -> None:
    names = "".join(f"dir/file {i}\n" for i in range(1000))
    text, _ = run_sh(counted_names(printing(names), cap=10))
    found = counted(section("conflicts", text), 1)
    assert found.totals == (1000,) and found.records[:2] == ["dir/file 0", "dir/file 1"]
    assert len(found.records) == 10


# ------------------------------------------------------------------ a sweep's runs

runs_strategy = st.lists(
    st.tuples(
        st.from_regex(r"offline-run-2026010[1-3]_[0-9]{2}-[a-c]{1,2}", fullmatch=True),
        st.integers(0, 10**6),
        st.booleans(),
    ),
    max_size=40,
    unique_by=lambda run: run[0],
)


def listing_of(runs: list[tuple[str, int, bool]]) -> str:
    lines = "".join(f"{n}\t{k}\t{int(s)}\n" for n, k, s in sorted(runs))
    junk = "junk line\n../offline-run-x\t1\t0\n"  # never counted as runs
    return printing(lines + junk)


@settings(max_examples=60, deadline=None)
@given(
    runs=runs_strategy,
    match=st.sampled_from([None, "offline-run-20260102*", "*-[ab]", "*_0?-*", "*.x"]),
    after=st.sampled_from([None, "offline-run-20260102_00-a"]),
    to=st.sampled_from([None, "offline-run-20260102_99-c"]),
    limit=st.sampled_from([None, 1, 3]),
    named=st.booleans(),
)
def test_runs_are_selected_on_the_login_node_as_the_arguments_say(
    runs: list[tuple[str, int, bool]],
    match: str | None,
    after: str | None,
    to: str | None,
    limit: int | None,
    named: bool,
) -> None:
    explicit = [n for n, _, _ in runs[::2]] + ["offline-run-20260101_00-gone"] if named else None
    args = WandbSyncArgs(runs=explicit, match=match, after_run=after, to_run=to, limit=limit)
    text, _ = run_sh(
        selected_runs(
            listing_of(runs),
            names=args.runs,
            glob_ere=glob_to_ere(match) if match else "",
            after=after or "",
            to=to or "",
            limit=limit or 0,
        )
    )
    got = parse_selected_runs(section("runs", text))
    # the same selection, worked out here with fnmatch and Python's comparisons
    chosen = [r for r in sorted(runs) if args.selects(r[0])]
    wanted = [r for r in chosen if not r[2]][:limit]
    assert got.all_runs == len(runs) and got.unsynced == sum(not r[2] for r in runs)
    assert (got.selected, got.selected_kib) == (len(wanted), sum(r[1] for r in wanted))
    assert got.page == [(n, k) for n, k, _ in wanted][:PAGE_RUNS]
    assert got.skipped == ([r[0] for r in chosen if r[2]] if named else [])
    assert got.missing == (["offline-run-20260101_00-gone"] if named else [])


def test_a_sweep_of_fifty_thousand_runs_is_counted_and_one_page_listed() -> None:
    runs = [(f"offline-run-20260301_{i:06d}-{'s' * 60}{i}", 4, i % 10 == 0) for i in range(50_000)]
    text, _ = run_sh(
        selected_runs(listing_of(runs), names=None, glob_ere="", after="", to="", limit=0)
    )
    got = parse_selected_runs(section("runs", text))
    assert (got.all_runs, got.unsynced, got.selected) == (50_000, 45_000, 45_000)
    assert got.selected_kib == 4 * 45_000
    # a page: what one preview shows and one approval covers
    assert 0 < len(got.page) <= PAGE_RUNS
    assert sum(len(n) for n, _ in got.page) <= PAGE_NAME_CHARS


@pytest.mark.parametrize("glob", ["*", "offline-run-2026*", "*[0-9]", "*.x*", "a[b", "*[]x]"])
def test_a_glob_becomes_the_same_match_in_awk(glob: str) -> None:
    names = ["offline-run-20260101_1", "offline-run-a.xb", "a[b", "offline-run-]", "zz"]
    expected = [n for n in names if fnmatch.fnmatchcase(n, glob)]
    lines = "".join(f"{n}\n" for n in names)
    ere = glob_to_ere(glob)
    text, _ = run_sh(f"{printing(lines)} | awk -v re={quote(ere)} '$0 ~ re'")
    assert "\\" not in ere and text.split() == expected


# ------------------------------------------------------------------ the rule


@pytest.mark.parametrize("cap", [200, 2_000, 20_000, 200_000])
def test_a_capped_stream_never_feeds_a_total(cap: int, tmp_path: Path) -> None:
    """Cut by the output cap at any size, a total is the exact one or there is none (an
    error): never a smaller number that looks exact."""
    text, _ = count_status(status_records(400, path_len=120), tmp_path)
    kept = capped(text, cap)
    try:
        found = counted(section("status", kept), 4)
    except UnparseableOutput:
        assert cap < len(text)
        return
    parsed = parse_status_records(found.records, found.totals)  # type: ignore[arg-type]
    assert parsed.counts == (1200, 800, 400, 400)
    assert parsed.truncated  # lists shorter than the totals: flagged
    assert found.cut == (ELISION in kept)


def test_a_parser_that_counts_what_it_reads_refuses_cut_output() -> None:
    lines = "".join(f"uploaded offline-run-{i}\n" for i in range(5_000))
    with pytest.raises(UnparseableOutput, match="output cap"):
        whole(section("sync", capped(lines, 4_096)))
    assert whole(section("sync", lines)) == lines


def test_a_count_record_that_is_missing_is_an_error_never_zero() -> None:
    with pytest.raises(UnparseableOutput, match="count"):
        counted(section("status", "# branch.head main\n? a\n"), 4)
