"""Pure: how a mutating op's script leaves the checkout as it was when it is cut short.

``pull`` and ``rebase`` change the checkout in one step (the fast-forward, the rebase).
Their scripts save what they need first (``o``: HEAD before; ``b``: the branch; ``t``:
the upstream commit they move to), refuse to start where an undo could not be exact
(files in the way, a dirty worktree), and then:

* on TERM, INT or HUP (the relay's remote kill, the login node's own ``timeout`` after the
  server died, a dropped session), a trap undoes what the step started;
* when the step fails (a conflict, a full disk, a killed git), the same undo runs.

The undo runs with hooks off and signals ignored, and ends in one of three states:

| state        | meaning                                                           |
|--------------|-------------------------------------------------------------------|
| as_before    | HEAD, branch, index and every file the step writes are as before  |
| completed    | the step had passed its point of no return (the branch moved)     |
| undo_failed  | neither: ``restore_commands`` say what restores it                |

It is written to ``<git dir>/aexp-relay/cut-<request id>`` (read and removed by the relay's
probe after a cut; left for ``repo_status`` when nobody is left to read it) and printed as
the step ``undo``. An op that finishes writes ``done-<request id>`` (state ``completed``):
when the connection dropped and the op ran on to its end with nobody to tell, that is how
the probe knows; the next pull or rebase removes it. Only what the op started is undone:
its guards refuse to start on top of a rebase or merge already in progress.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..model.results import InterruptedOp
from .quoting import quote, quote_path

# How long the login node lets a cut op undo itself (TERM to KILL), and how long the relay
# waits for it. An undo rewrites only the files the step touched; filters (git-lfs) run.
UNDO_S = 60.0
REPORT_DIR = "aexp-relay"
STATES = ("as_before", "completed", "undo_failed")

# Shell shared by both ops. Variables: o, b, t (see above), R (request id), _op, _ph (phase:
# fetch, apply, done), _st and _why (the outcome).
_COMMON = (
    # the paths the step writes (o -> t; a rename is a delete and an add), NUL-separated
    "_P() { git diff-tree -r -z --name-only --no-renames ${1:+--diff-filter=$1} "
    '"$o" "$t" </dev/null; }; '
    # none of the NUL-separated paths on stdin exists
    "_absent() { xargs -0 -r sh -c "
    '\'for p; do if [ -e "$p" ] || [ -L "$p" ]; then exit 1; fi; done; exit 0\' sh; }; '
    '_at() { [ "$(git rev-parse -q --verify HEAD </dev/null)" = "$1" ] && '
    '[ "$(git symbolic-ref -q HEAD </dev/null)" = "$b" ]; }; '
    "_fresh() { git update-index -q --refresh </dev/null >/dev/null 2>&1; }; "
    # the outcome, in-band (step "undo") and, when asked (a cut), in the report file
    "_text() { "
    "printf 'op %s\\nrequest %s\\nstate %s\\nhead %s\\nbranch %s\\nold %s\\ntarget %s\\nwhy %s\\n' "
    '"$_op" "$R" "$_st" "$(git rev-parse -q --verify HEAD </dev/null)" '
    '"$(git symbolic-ref -q HEAD </dev/null || echo detached)" "$o" "$t" "$_why"; }; '
    # the report, kept in the repo as cut-<R> (or done-<R>)
    "_save() { "
    f'_d=$(git rev-parse --git-path {REPORT_DIR} </dev/null) && mkdir -p "$_d" 2>/dev/null && '
    '{ printf \'%s\\n\' "$_rt" > "$_d/$1-$R"; } 2>/dev/null; }; '
    '_report() { _rt=$(_text); if [ "$1" = file ] || [ "$_st" != as_before ]; then _save cut; fi; '
    "b undo; printf '%s\\n' \"$_rt\"; e undo 0; }; "
    # finished: what a probe after a dropped connection reads
    "_done() { _st=completed; _why=; _rt=$(_text); _save done; }; "
    # the trap: no second signal stops the undo half-way
    '_cut() { trap "" TERM INT HUP; _undo; _report file; exit 143; }; '
)

# The fast-forward: HEAD is o until git moves the branch to t, its point of no return.
# Before that, the files it wrote are put back: the ones o has from o, the ones only t has
# removed. The guard before the step made sure none of them was dirty or in the way.
_FAST_FORWARD = (
    '_same() { _at "$o" || return 1; _fresh; '
    '_P | xargs -0 -r git diff-index --quiet "$o" -- || return 1; '
    '_P | xargs -0 -r git diff-index --quiet --cached "$o" -- || return 1; '
    "_P A | _absent; }; "
    "_undo() { _st=as_before; _why=; "
    "case $_ph in done) _st=completed ;; apply) "
    'if [ "$t" != "$o" ] && _at "$t"; then _st=completed; '
    'elif [ -z "$o" ]; then _st=undo_failed; _why="it started on an unborn branch"; '
    "elif ! _same; then "
    '_P DMT | xargs -0 -r git -c core.hooksPath=/dev/null checkout -q "$o" -- >&2; '
    "_P A | xargs -0 -r git rm -q --cached --ignore-unmatch -- >&2; "
    "_P A | xargs -0 -r rm -f -- >&2; "
    "_same || { _st=undo_failed; _why='files the fast-forward wrote could not be put back'; }; "
    "fi ;; esac; }; "
)

# The rebase: git's own abort while its state directory exists. Its checkout may have
# left files that only t has as untracked files (cut before the index was written): they
# were not there before (the guard checked), so they go.
_REBASE = (
    '_inrb() { [ -e "$(git rev-parse --git-path rebase-merge)" ] || '
    '[ -e "$(git rev-parse --git-path rebase-apply)" ]; }; '
    "_clean() { _fresh; git diff-index --quiet --cached HEAD -- </dev/null && "
    "git diff-files --quiet </dev/null; }; "
    "_undo() { _st=as_before; _why=; "
    "case $_ph in done) _st=completed ;; apply) _ab=; "
    "if _inrb; then _ab=1; git -c core.hooksPath=/dev/null rebase --abort </dev/null >&2 || "
    "_why='git rebase --abort failed'; fi; "
    'if [ -z "$_ab" ] && ! _inrb && [ "$(git symbolic-ref -q HEAD)" = "$b" ] && '
    '[ "$(git rev-parse -q --verify HEAD)" != "$o" ]; then _st=completed; '
    "else _P A | xargs -0 -r git ls-files -z -o -- | xargs -0 -r rm -f -- >&2; "
    '{ _at "$o" && ! _inrb && _clean; } || '
    "{ _st=undo_failed; _why=${_why:-'the checkout is not as it was before the rebase'}; }; "
    "fi ;; esac; }; "
)

UNDO = {"pull": _COMMON + _FAST_FORWARD, "rebase": _COMMON + _REBASE}


def arm(op: str, request_id: str) -> str:
    """Shell that sets up the undo for op: its functions, the phase, and the traps. A closed
    pipe (the relay went away) never kills a step half-way: SIGPIPE is ignored."""
    if op not in UNDO or not re.fullmatch(r"[0-9a-f]{6,64}", request_id):
        raise ValueError(f"no undo for {op!r} / bad request id")
    return (
        f"{UNDO[op]}_op={op}; R={request_id}; t=; _ph=fetch; trap '' PIPE; trap _cut TERM INT HUP"
    )


def probe_report(request_id: str) -> str:
    """Shell for the relay's probe after a cut: print the report (the undo's, or the one
    an op that finished left) as step ``report`` and remove it; print HEAD and the branch
    as steps of their own."""
    if not re.fullmatch(r"[0-9a-f]{6,64}", request_id):
        raise ValueError("bad request id")
    return (
        f"_d=$(git rev-parse --git-path {REPORT_DIR} </dev/null); "
        f'b report; cat "$_d/cut-{request_id}" 2>/dev/null || '
        f'cat "$_d/done-{request_id}" 2>/dev/null; e report $?; '
        f'rm -f "$_d/cut-{request_id}" "$_d/done-{request_id}"; '
        "b head; git rev-parse -q --verify HEAD </dev/null; e head $?; "
        "b branch; git symbolic-ref -q HEAD </dev/null; e branch $?"
    )


@dataclass(frozen=True)
class UndoReport:
    """What the undo said: the state, and where HEAD is."""

    op: str
    request_id: str
    state: str  # as_before, completed, undo_failed, or unknown (no report)
    head: str | None
    branch: str | None  # refs/heads/x, or None when detached
    old: str | None
    target: str | None
    why: str
    when: str = ""  # UTC, as the login node's clock had it

    @property
    def words(self) -> str:
        """The state in a sentence, HEAD included."""
        at = f"HEAD {self.head[:12]}" if self.head else "no HEAD"
        on = f" on {self.branch.removeprefix('refs/heads/')}" if self.branch else " (detached)"
        return {
            "as_before": f"the checkout is exactly as before the call ({at}{on})",
            "completed": f"the {self.op} had already finished: the checkout is as after a "
            f"successful {self.op} ({at}{on})",
            "undo_failed": f"undoing it failed ({self.why}): the checkout is left with {at}{on}",
        }.get(self.state, f"its state could not be confirmed ({at}{on})")


def parse_report(text: str) -> UndoReport | None:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key:
            fields[key] = value.strip()
    if fields.get("state") not in STATES:
        return None

    def sha(name: str) -> str | None:
        value = fields.get(name, "")
        return value if re.fullmatch(r"[0-9a-f]{7,64}", value) else None

    branch = fields.get("branch", "")
    return UndoReport(
        op=fields.get("op", ""),
        request_id=fields.get("request", ""),
        state=fields["state"],
        head=sha("head"),
        branch=branch if branch.startswith("refs/heads/") else None,
        old=sha("old"),
        target=sha("target"),
        why=fields.get("why", ""),
        when=fields.get("when", ""),
    )


MAX_REPORTS = 10


def parse_reports(text: str) -> list[InterruptedOp]:
    """The reports ``repo_status`` found, newest first (at most ``MAX_REPORTS``)."""
    reports = [parse_report(block) for block in text.split("\n\n")]
    found = sorted((r for r in reports if r is not None), key=lambda r: r.when, reverse=True)
    return [
        InterruptedOp(
            request_id=r.request_id,
            op=r.op,
            checkout=r.state,
            head=r.head,
            when=r.when or None,
        )
        for r in found[:MAX_REPORTS]
    ]


def restore_commands(report: UndoReport, repo: str) -> list[str]:
    """What a person runs on the login node to put the checkout back as before the op."""
    cd = f"cd {quote_path(repo)}"
    old, target = report.old, report.target
    branch = report.branch or ""
    if not old:
        return [cd, "git status  # the op started on an unborn branch: check it by hand"]
    if report.op == "rebase":
        short = branch.removeprefix("refs/heads/") if branch else ""
        back = f"git checkout -f {quote(short)} && git reset --hard {old}" if short else ""
        return [cd, "git rebase --abort" + (f" || {{ {back}; }}" if back else "")]
    if not target:
        return [cd, "git status  # nothing was written yet; HEAD is as before"]
    paths = f"git diff -z --name-only --no-renames --diff-filter={{}} {old} {target}"
    return [
        cd,
        "# only if no other git command runs in this checkout: rm -f .git/index.lock",
        paths.format("DMT") + f" | xargs -0 -r git checkout {old} --",
        paths.format("A") + " | xargs -0 -r git rm -q -f --ignore-unmatch --",
    ]
