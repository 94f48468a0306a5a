"""Every hint says each thing once. A hint is what the agent acts on next: a sentence or an
instruction twice ("retry with AEXP_RELAY_SSH_VERBOSE=1 ... Set AEXP_RELAY_SSH_VERBOSE=1
...") costs tokens and reads as two steps. Every error kind's hint is built here as the
relay builds it (the failure's own hint, then what the call adds), and checked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aexp_relay_mcp.adapters.reference import OTHER_KINDS
from aexp_relay_mcp.model.errors import Failure, render_hint
from aexp_relay_mcp.relay.diagnose import fill, script_failure, transport_failure
from aexp_relay_mcp.remote.failures import GIT_FAILURES, GUARD_FAILURES, classify_guard_failure
from aexp_relay_mcp.remote.output import ScriptOutput, Section
from aexp_relay_mcp.ssh.failures import SSH_FAILURES
from aexp_relay_mcp.ssh.login_shell import login_shell_failure
from aexp_relay_mcp.ssh.masters import CONNECT_HINT, master_hint
from aexp_relay_mcp.ssh.runner import ProcessResult

HOST, REPO = "mycluster", "/scratch/me/exp"


def sentences(text: str) -> list[str]:
    """Sentences, normalised: backticked commands kept whole (their dots are no stops)."""
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z`{(])", text.strip())
    return [re.sub(r"\W+", " ", p).strip().lower() for p in parts if p.strip()]


def said_twice(hint: str) -> list[str]:
    """What the hint says more than once: a sentence, a command in backticks, a setting."""
    found = []
    seen = sentences(hint)
    found += [s for s in set(seen) if seen.count(s) > 1]
    for pattern in (r"`[^`]+`", r"AEXP_RELAY_[A-Z_]+", r"aexp-relay-mcp connect"):
        items = re.findall(pattern, hint)
        found += [i for i in set(items) if items.count(i) > 1]
    return found


def ssh_failed(stderr: str, verbose_log: Path | None) -> str:
    out = ScriptOutput(started=False, exit_code=None, remote_pid=None, kind=None)
    result = ProcessResult(("ssh",), 255, "", stderr, False, False, 0, len(stderr), 0.1)
    return transport_failure(out, result, verbose_log, HOST).hint


def git_failed(stderr: str) -> str:
    section = Section("fetch", 1, "", stderr)
    out = ScriptOutput(
        started=True, exit_code=1, remote_pid=1, kind=None, sections={"fetch": section},
        stderr=stderr,
    )  # fmt: skip
    return script_failure(out, "fetch", HOST, REPO).hint


def first_needle(needles: tuple[object, ...]) -> str:
    return next(n for n in needles if isinstance(n, str))


HINTS: list[tuple[str, str]] = []
for _kind, _needles, _, _ in SSH_FAILURES:
    for _log in (None, Path("/home/me/.aexp/ssh-logs/ssh-1.log")):
        HINTS.append((f"ssh {_kind} (verbose log: {bool(_log)})", ssh_failed(_needles[0], _log)))
HINTS.append(("ssh unreachable", ssh_failed("something nobody foresaw", None)))
HINTS.append(("ssh unreachable, verbose", ssh_failed("x", Path("/tmp/ssh.log"))))
for _kind, _needles, _, _ in GIT_FAILURES:
    HINTS.append((f"git {_kind}", git_failed(first_needle(_needles))))
for _kind in GUARD_FAILURES:
    _f: Failure = classify_guard_failure(_kind, "")
    HINTS.append((f"guard {_kind}", render_hint(fill(_f.hint, HOST, REPO))))
for _shell in (None, "/bin/bash", "/usr/bin/tcsh", "/usr/bin/fish"):
    HINTS.append((f"login shell {_shell}", fill(login_shell_failure(_shell, 1, "").hint, HOST, "")))
for _kind, _, _message, _hint in SSH_FAILURES:
    _started = master_hint(Failure(_kind, _message, _hint), HOST)
    HINTS.append((f"master start {_kind}", render_hint(_started)))
HINTS += [(f"other {kind}", hint) for _, kind, _, hint in OTHER_KINDS]


@pytest.mark.parametrize(("where", "hint"), HINTS, ids=[w for w, _ in HINTS])
def test_every_hint_says_each_thing_once(where: str, hint: str) -> None:
    assert hint.strip(), where
    assert said_twice(hint) == [], f"{where}: {hint}"


def test_the_check_finds_a_hint_that_says_a_thing_twice() -> None:
    doubled = (
        "Run `status`, or retry with AEXP_RELAY_SSH_VERBOSE=1 and read the ssh log. "
        "Set AEXP_RELAY_SSH_VERBOSE=1 for an ssh debug log."
    )
    assert said_twice(doubled) == ["AEXP_RELAY_SSH_VERBOSE"]
    assert said_twice("Retry. Retry.") == ["retry"]
    assert CONNECT_HINT  # the connect advice exists once, for the master's hints to use
