"""Pure: git porcelain, push, fetch and wandb output -> typed values."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..model.results import BranchState, Commit, FileEntry, PushedRef, RefUpdate
from ..model.text import clean_text

LIST_CAP = 200
COMMIT_CAP = 100
# git cuts a subject longer than this (``%<(N,trunc)``: ".." at the end; shorter ones come
# padded with spaces), so that no commit list outgrows the output cap.
SUBJECT_CHARS = 500


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class ParsedStatus:
    state: BranchState
    staged: list[FileEntry]
    unstaged: list[FileEntry]
    untracked: list[str]
    conflicted: list[str]
    counts: tuple[int, int, int, int]

    @property
    def truncated(self) -> bool:
        shown = (len(self.staged), len(self.unstaged), len(self.untracked), len(self.conflicted))
        return any(n > k for n, k in zip(self.counts, shown, strict=True))


_C_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}
_OCTAL = frozenset("01234567")


def unquote_path(text: str) -> str:
    """A path as git prints it one to a line: as is, or C-quoted (``"a\\tb"``) when it holds
    a quote, a backslash, a tab, a newline or another control character."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    out = bytearray()
    body, i = text[1:-1], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and len(body) >= i + 4 and set(body[i + 1 : i + 4]) <= _OCTAL:
            out.append(int(body[i + 1 : i + 4], 8) & 0xFF)
            i += 4
        elif ch == "\\" and i + 1 < len(body) and body[i + 1] in _C_ESCAPES:
            out.append(_C_ESCAPES[body[i + 1]])
            i += 2
        else:
            out += ch.encode()
            i += 1
    return out.decode("utf-8", errors="backslashreplace")


def parse_status_records(
    records: list[str], counts: tuple[int, int, int, int], cap: int = LIST_CAP
) -> ParsedStatus:
    """``git status --porcelain=v2 --branch`` lines (as ``counting`` prints them: the first
    entries of each kind; a rename's source after a tab) and the exact ``counts`` (staged,
    unstaged, untracked, conflicted) counted where git ran. The counts never come from the
    records."""
    branch: str | None = None
    head: str | None = None
    upstream: str | None = None
    ahead: int | None = None
    behind: int | None = None
    staged: list[FileEntry] = []
    unstaged: list[FileEntry] = []
    untracked: list[str] = []
    conflicted: list[str] = []
    for rec in records:
        if not rec:
            continue
        if rec.startswith("# branch.oid "):
            oid = rec[len("# branch.oid ") :]
            head = None if oid == "(initial)" else oid
        elif rec.startswith("# branch.head "):
            name = rec[len("# branch.head ") :]
            branch = None if name == "(detached)" else clean_text(name)
        elif rec.startswith("# branch.upstream "):
            upstream = clean_text(rec[len("# branch.upstream ") :])
        elif rec.startswith("# branch.ab "):
            m = re.match(r"# branch\.ab \+(\d+) -(\d+)", rec)
            if m:
                ahead, behind = int(m.group(1)), int(m.group(2))
        elif rec[:2] in ("1 ", "2 "):
            fields = rec.split(" ", 8 if rec[0] == "1" else 9)
            xy = fields[1]
            where, _, source = fields[-1].partition("\t")
            path = clean_text(unquote_path(where))
            orig = clean_text(unquote_path(source)) if rec[0] == "2" else None
            entry = FileEntry(path=path, status=xy, orig_path=orig)
            if xy[0] != "." and len(staged) < cap:
                staged.append(entry)
            if xy[1] != "." and len(unstaged) < cap:
                unstaged.append(entry)
        elif rec.startswith("u "):
            if len(conflicted) < cap:
                conflicted.append(clean_text(unquote_path(rec.split(" ", 10)[-1])))
        elif rec.startswith("? ") and len(untracked) < cap:
            untracked.append(clean_text(unquote_path(rec[2:])))
    state = BranchState(branch=branch, head=head, upstream=upstream, ahead=ahead, behind=behind)
    return ParsedStatus(state, staged, unstaged, untracked, conflicted, counts)


def parse_head_line(text: str) -> tuple[str | None, str | None]:
    line = text.strip("\n")
    if not line:
        return None, None
    sha, _, subject = line.partition("\t")
    return sha or None, clean_text(subject.rstrip(" "))


def parse_commits(text: str, cap: int = COMMIT_CAP) -> list[Commit]:
    """``<sha>\\t<subject>`` lines; a subject git cut to SUBJECT_CHARS comes padded."""
    commits = []
    for line in text.splitlines():
        sha, sep, subject = line.partition("\t")
        if sep and re.fullmatch(r"[0-9a-f]{7,64}", sha):
            commits.append(Commit(sha=sha, subject=clean_text(subject.rstrip(" "))))
        if len(commits) >= cap:
            break
    return commits


def parse_sha(text: str) -> str | None:
    value = text.strip()
    return value if re.fullmatch(r"[0-9a-f]{7,64}", value) else None


# --------------------------------------------------------------------------- progress

# git --progress phases, in the order they happen, for one overall percentage.
_PROGRESS_RE = re.compile(
    rb"(Counting objects|Compressing objects|Receiving objects|Resolving deltas|Writing objects)"
    rb":\s+(\d{1,3})%"
)
_PHASE_ORDER = {
    b"Counting objects": 0,
    b"Compressing objects": 1,
    b"Receiving objects": 2,
    b"Writing objects": 2,
    b"Resolving deltas": 3,
}


class GitProgress:
    """Feeds on git's stderr bytes; calls back with (overall percent, message) as it moves."""

    def __init__(self, callback: Callable[[float, str], None]) -> None:
        self.callback = callback
        self.last = -1.0
        self.pending = b""

    def feed(self, chunk: bytes) -> None:
        data = self.pending + chunk
        cut = max(data.rfind(b"\r"), data.rfind(b"\n"))
        self.pending = data[cut + 1 :][-256:] if cut >= 0 else data[-256:]
        for match in _PROGRESS_RE.finditer(data[: cut + 1] if cut >= 0 else b""):
            phase = match.group(1)
            pct = min(100, int(match.group(2)))
            overall = (_PHASE_ORDER[phase] * 100 + pct) / 4
            if overall > self.last:
                self.last = overall
                self.callback(overall, f"{phase.decode()}: {pct}%")


# --------------------------------------------------------------------------- fetch


def parse_moved_refs(records: list[str]) -> list[RefUpdate]:
    """Lines ``<class> <ref> <old|-> <new|-> <change>`` (``counting.moved_refs``), in the
    order given: what matters first."""
    updates = []
    for line in records:
        parts = line.split(" ")
        if len(parts) != 5 or parts[4] not in ("new", "updated", "deleted"):
            continue
        _, ref, old, new, change = parts
        updates.append(
            RefUpdate(
                ref=clean_text(ref.removeprefix("refs/remotes/")),
                old=None if old == "-" else old,
                new=None if new == "-" else new,
                change=change,
            )
        )
    return updates


# --------------------------------------------------------------------------- push

_PUSH_FLAGS = {" ": "ok", "+": "forced", "-": "deleted", "*": "new", "=": "up_to_date"}


def parse_push_porcelain(text: str) -> list[PushedRef]:
    """Lines ``<flag>\\t<from>:<to>\\t<summary>`` from ``git push --porcelain``, read only
    after its ``To <url>`` line: a pre-push hook's stdout comes before it, and is not git's."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("To ")]
    refs = []
    for line in lines[starts[-1] + 1 :] if starts else []:
        if line == "Done":
            break
        if len(line) < 2 or line[1] != "\t":
            continue
        flag, _, rest = line[0], "", line[2:]
        spec, _, summary = rest.partition("\t")
        local, _, remote_ref = spec.partition(":")
        if flag == "!":
            status = "remote_rejected" if "remote rejected" in summary else "rejected"
        else:
            status = _PUSH_FLAGS.get(flag, "unknown")
        refs.append(
            PushedRef(
                local=clean_text(local),
                remote_ref=clean_text(remote_ref),
                status=status,
                summary=clean_text(summary),
            )
        )
    return refs


# --------------------------------------------------------------------------- wandb

RUN_NAME_RE = re.compile(r"^offline-run-[A-Za-z0-9_.-]+$")


def glob_to_ere(glob: str) -> str:
    """A run-name glob (letters, digits, ``_ . - * ? [ ]``) as an anchored POSIX ERE with
    no backslash (awk reads escapes in ``-v`` values): what ``fnmatch`` would match."""
    out, i = ["^"], 0
    while i < len(glob):
        ch = glob[i]
        close = glob.find("]", i + 2) if ch == "[" else -1
        if ch == "[" and close > 0:
            out.append(glob[i : close + 1])  # * ? . inside brackets are literal in both
            i = close + 1
            continue
        out.append({"*": ".*", "?": ".", ".": "[.]", "[": "[[]", "]": "[]]"}.get(ch, ch))
        i += 1
    return "".join(out) + "$"
