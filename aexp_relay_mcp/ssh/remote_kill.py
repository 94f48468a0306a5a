"""Pure: the command that ends a remote process group (TERM, poll, KILL).

Not an op: the process-group id is an integer the start marker reported. It knows
processes, not git.
"""

from __future__ import annotations

import re

KILL_DONE = "aexp-kill:"


# How long the group gets between TERM and KILL, by default: most exit at once.
TERM_GRACE_S = 2.0
_FAST_POLLS = 40  # the first two seconds, every 50 ms; then every 250 ms


def build_kill_matching(needle: str, *, term_grace_s: float = TERM_GRACE_S) -> str:
    """End every process group whose command line holds ``needle``, one of the relay's
    own markers: a command whose start marker never arrived, so its group is not known.
    Each group found ends as in ``build_kill_command``; prints ``aexp-kill: gone`` last.
    The needle is split where this command's own processes would show it."""
    if not re.fullmatch(r"@AEXP-[0-9a-f]{8,64}@", needle):
        raise ValueError("the needle must be a relay marker")
    head, tail = needle[:6], needle[6:]
    find = (
        f"ps -A -ww -o pgid= -o args= 2>/dev/null | awk -v a='{head}' -v b='{tail}' "
        "'index($0, a b) && $1 > 1 {print $1}' | sort -u"
    )
    one = _end_group('"$_g"', "g")
    return f"for _g in $({find}); do ( {one} ); done; echo '{KILL_DONE} gone'"


def build_kill_command(pgid: int, *, term_grace_s: float = TERM_GRACE_S) -> str:
    """End a remote process group: TERM, then poll until it is gone, and KILL only if it
    outlives ``term_grace_s`` (an op that undoes its own changes on TERM is given longer).
    Prints ``aexp-kill: gone`` or ``aexp-kill: killed`` last. Not an op: the pid is an
    integer the start marker reported.

    "Gone" means ``kill -0`` fails, or every process left in the group is a zombie (an
    orphan whose reaper is slow, as in some containers): ``ps`` is asked only then.
    """
    if int(pgid) <= 1:
        raise ValueError("refusing to signal process group <= 1")
    return _end_group(str(int(pgid)), str(int(pgid)), term_grace_s)


def _end_group(group: str, awk_group: str, term_grace_s: float = TERM_GRACE_S) -> str:
    """TERM the group (a shell word: a number, or "$_g"), poll, KILL. ``awk_group``: the
    same, as awk sees it (a number, or a variable ``g`` passed in)."""
    p = f"-{group}"
    fast = min(_FAST_POLLS, max(1, round(term_grace_s / 0.05)))
    polls = fast + max(0, round((term_grace_s - fast * 0.05) / 0.25))
    gone = f"{{ echo '{KILL_DONE} gone'; exit 0; }}"
    pass_in = f"-v g={group} " if awk_group == "g" else ""
    only_zombies = (
        '_s=$(ps -A -o pgid= -o stat= 2>/dev/null) && [ -n "$_s" ] && '
        f"! printf '%s\\n' \"$_s\" | awk {pass_in}'$1 == {awk_group} && $2 !~ /^Z/ {{f = 1}} "
        "END {exit !f}'"
    )
    return (
        f"kill -TERM {p} 2>/dev/null || {gone}; _i=0; "
        f"while [ $_i -lt {polls} ]; do "
        f"if [ $_i -lt {fast} ]; then sleep 0.05 2>/dev/null || sleep 1; "
        "else sleep 0.25 2>/dev/null || sleep 1; fi; "
        f"kill -0 {p} 2>/dev/null || {gone}; "
        f"if [ $((_i % 2)) -eq 1 ] && {only_zombies}; then {gone}; fi; "
        "_i=$((_i+1)); done; "
        f"kill -KILL {p} 2>/dev/null; echo '{KILL_DONE} killed'; exit 0"
    )
