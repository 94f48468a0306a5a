"""Pure: lists counted where they are made, so that no total depends on the output cap.

The relay keeps at most ``AEXP_RELAY_OUTPUT_CAP`` bytes of each stream: that is for
memory. A total counted from what was kept would be wrong, silently, once a list outgrows
it (50,000 changed files with long paths are megabytes of porcelain). So every list that
has a total goes through a small awk program on the login node, which

* counts every record,
* prints the first ones only (``LIST_CAP`` of each kind, ``LIST_BYTES`` in all), and
* ends with a count record (``# aexp.count ...``) carrying the exact totals.

**The rule** (``counted`` and ``whole`` enforce it): a total comes from a count record,
never from counting a list; a list is read only as far as the output is whole, and is
flagged when it is not complete. A step whose count record is missing is
``UnparseableOutput``, never a smaller number.

Records travel one per line: git quotes a path that holds a newline, a tab, a quote or a
control character, C-style (``parsing.unquote_path`` reads it back). Only POSIX ``awk``,
``sort`` and ``head`` are used (mawk, gawk and busybox awk alike), under ``LC_ALL=C``; one
awk beside git is all that counting a list costs.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model.text import ELISION
from .output import Section, UnparseableOutput
from .quoting import quote

LIST_CAP = 200  # records of each kind printed (results are cut further to their budget)
LIST_BYTES = 64 * 1024  # bytes of records printed in all, whatever their length
COUNT = "# aexp.count"

# `git status --porcelain=v2 --branch` (a rename's source after a tab, on its line):
# headers pass, entries are counted by kind and the first printed, and the count record
# ends it. git prints `# branch.oid` first whenever it succeeds: without it, git failed
# (its reason is on stderr) and so does this, with no count.
_STATUS_AWK = """
/^# branch[.]oid / { ran = 1 }
/^# / { print; next }
$0 == "" { next }
/^[12] / {
  x = substr($0, 3, 1) != "."; y = substr($0, 4, 1) != "."; s += x; u += y
  if (((x && ps < cap) || (y && pu < cap)) && bytes < maxb) {
    print; ps += x; pu += y; bytes += length($0)
  }
  next
}
/^u / { c++; if (pc < cap && bytes < maxb) { print; pc++; bytes += length($0) }; next }
/^[?] / { n++; if (pn < cap && bytes < maxb) { print; pn++; bytes += length($0) }; next }
END {
  if (!ran) exit 128
  print "# aexp.count " s + 0 " " u + 0 " " n + 0 " " c + 0
}
"""


def counted_status(status: str, cap: int = LIST_CAP) -> str:
    """Shell: ``status`` (a rendered ``git status --porcelain=v2 --branch``) counted on the
    login node; ``cap`` entries of each kind printed (0: the headers only)."""
    return f"{status} </dev/null | awk -v cap={int(cap)} -v maxb={LIST_BYTES} {quote(_STATUS_AWK)}"


# Refs before ("B <sha> <ref>") and after ("A <sha> <ref>") a fetch -> what moved, each
# line "<class> <ref> <old|-> <new|-> <change>" (class 1: the upstream, 2: its remote's
# branches, 3: the rest), and the count record, class 0, first.
_REFS_AWK = """
NF != 3 || $3 ~ /[/]HEAD$/ { next }
$1 == "B" { b[$3] = $2; next }
$1 == "A" { a[$3] = $2 }
function out(r, o, w, what) {
  print (r == up ? 1 : (pre != "" && index(r, pre) == 1 ? 2 : 3)) " " r " " o " " w " " what
}
END {
  for (r in a) {
    if (!(r in b)) { n++; out(r, "-", a[r], "new") }
    else if (a[r] != b[r]) { u++; out(r, b[r], a[r], "updated") }
  }
  for (r in b) if (!(r in a)) { d++; out(r, b[r], "-", "deleted") }
  print "0 # aexp.count " n + 0 " " u + 0 " " d + 0
}
"""


def moved_refs(before: str, after: str, cap: int = LIST_CAP) -> str:
    """Shell: the refs that moved between two ``<B|A> <sha> <ref>`` listings (shell that
    prints them), what matters first (the upstream in ``$_up``, then the branches under
    ``$_upre``, then by name), counted."""
    return (
        f'{{ {before}; {after}; }} | awk -v up="${{_up:-}}" -v pre="${{_upre:-}}" '
        f"{quote(_REFS_AWK)} | sort -k1,1n -k2,2 | head -n {int(cap) + 1}"
    )


# Names, one a line (git diff --name-only, quoted where needed) -> the first, and a count.
_NAMES_AWK = """
$0 == "" { next }
{ n++; if (n <= cap && bytes < maxb) { print; bytes += length($0) } }
END { print "# aexp.count " n + 0 }
"""


def counted_names(command: str, cap: int = LIST_CAP) -> str:
    """Shell: a command's names, one a line, counted; the first ``cap`` printed."""
    return f"{command} | awk -v cap={int(cap)} -v maxb={LIST_BYTES} {quote(_NAMES_AWK)}"


# ------------------------------------------------------------------ reading them


@dataclass(frozen=True)
class Counted:
    """A counted step's output: its exact totals, and the records as far as they are whole."""

    totals: tuple[int, ...]
    records: list[str]
    cut: bool  # the output cap cut records out: the list is not all there was


def whole(section: Section) -> str:
    """A step's stdout, for a parser that counts what it reads: refused when the output
    cap cut part of it (a count would come out smaller, looking exact)."""
    if ELISION in section.stdout:
        raise UnparseableOutput(
            f"the output of step {section.name!r} was cut at the output cap "
            "(AEXP_RELAY_OUTPUT_CAP), and a count of it would be wrong"
        )
    return section.stdout


def counted(section: Section, width: int, *, prefix: str = "") -> Counted:
    """The totals from a step's count record (``width`` numbers), and its other records up
    to where the output cap cut them (the record at the cut dropped, ``cut`` set)."""
    head, elided, rest = section.stdout.partition(ELISION)
    # Before a cut: every record but the one the cut ended half-way. After it: only the
    # count record (the records there would leave a gap in a list that is in order).
    kept = head.split("\n")[:-1] if elided else head.split("\n")
    after = rest.split("\n")[1:] if elided else []
    totals: tuple[int, ...] | None = None
    records = []
    for index, line in enumerate(kept + after):
        body = line.removeprefix(prefix)
        if body.startswith(COUNT + " "):
            numbers = body[len(COUNT) + 1 :].split()
            if len(numbers) == width and all(n.isdigit() for n in numbers):
                totals = tuple(int(n) for n in numbers)
        elif line and index < len(kept):
            records.append(line)
    if totals is None:
        raise UnparseableOutput(
            f"the count of step {section.name!r} is missing (it ends every counted list)"
        )
    return Counted(totals, records, bool(elided))


# ------------------------------------------------------------------ a sweep's runs

# Runs on one page of a preview: what one approval covers, shown whole, whatever the sweep.
PAGE_RUNS = 100
PAGE_NAME_CHARS = 6000

# The run listing ("<name>\t<KiB>\t<synced 0|1>", by name) -> the runs the arguments select:
# counted (all, unsynced, selected, selected KiB), the page (the first selected runs, up to
# PAGE_RUNS and PAGE_NAME_CHARS of names) as "run\t<name>\t<KiB>", and for runs named
# explicitly "skipped\t<name>" (synced already) and "missing\t<name>" (not there).
_RUNS_AWK = """
BEGIN {
  FS = "\\t"; k = split(names, want, " ")
  for (i = 1; i <= k; i++) asked[want[i]] = 1
}
NF != 3 || $1 !~ /^offline-run-[A-Za-z0-9_.-]+$/ || index($1, "..") { next }
{ all++; if ($3 != "1") unsynced++ }
k && !($1 in asked) { next }
k { seen[$1] = 1 }
re != "" && $1 !~ re { next }
after != "" && !($1 > after) { next }
to != "" && !($1 <= to) { next }
$3 == "1" { if (k) print "skipped\\t" $1; next }
limit && sel >= limit { next }
{
  sel++; kib += $2
  if (!full && page < pagen && chars + length($1) <= pagec) {
    print "run\\t" $1 "\\t" $2; page++; chars += length($1)
  } else full = 1
}
END {
  for (i = 1; i <= k; i++) if (!(want[i] in seen)) print "missing\\t" want[i]
  print "# aexp.count " all + 0 " " unsynced + 0 " " sel + 0 " " kib + 0
}
"""


def selected_runs(
    listing: str,
    *,
    names: list[str] | None,
    glob_ere: str,
    after: str,
    to: str,
    limit: int,
) -> str:
    """Shell: the run listing (shell that prints it) selected and counted on the login
    node. Every value is a run name or glob the registry validated; quoted all the same."""
    values = {
        "names": " ".join(names or []),
        "re": glob_ere,
        "after": after,
        "to": to,
        "limit": str(int(limit)),
        "pagen": str(PAGE_RUNS),
        "pagec": str(PAGE_NAME_CHARS),
    }
    assigns = " ".join(f"-v {key}={quote(value)}" for key, value in values.items())
    return f"{listing} | awk {assigns} {quote(_RUNS_AWK)}"


@dataclass(frozen=True)
class RunSelection:
    """What a sweep's selection holds, counted where the runs are."""

    page: list[tuple[str, int]]  # (name, KiB): the first selected runs, one preview's worth
    skipped: list[str]  # named explicitly, but synced already
    missing: list[str]  # named explicitly, but not there
    all_runs: int
    unsynced: int
    selected: int  # unsynced runs the arguments select, limit applied (exact)
    selected_kib: int


def parse_selected_runs(section: Section) -> RunSelection:
    found = counted(section, 4)
    page: list[tuple[str, int]] = []
    skipped, missing = [], []
    for record in found.records:
        word, _, rest = record.partition("\t")
        if word == "run":
            name, _, kib = rest.partition("\t")
            if not kib.isdigit():
                raise UnparseableOutput(f"a run's size is not a number: {record[:80]!r}")
            page.append((name, int(kib)))
        elif word == "skipped":
            skipped.append(rest)
        elif word == "missing":
            missing.append(rest)
    if found.cut:
        raise UnparseableOutput(
            "the run listing was cut at the output cap (AEXP_RELAY_OUTPUT_CAP): the page of "
            "runs an approval covers would not be whole"
        )
    all_runs, unsynced, selected, selected_kib = found.totals
    return RunSelection(page, skipped, missing, all_runs, unsynced, selected, selected_kib)
