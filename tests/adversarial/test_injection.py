"""Injection, every input field: refused, or (repo paths) quoted so the shell sees the literal.

Each case is checked for side effects: no canary file on either side (the sandbox's
"login node" is this machine), origin's refs unchanged, no ssh login for a refused call
(counted in the sandbox sshd's log), and an audit line for every refusal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aexp_relay_mcp.adapters.selftest.stdio_driver import StdioServer
from aexp_relay_mcp.sandbox import Sandbox, sshd_available

CANARY_DIR_NAME = "canaries"


@pytest.fixture(scope="module")
def target() -> Iterator[tuple[Sandbox, StdioServer]]:
    if not sshd_available():
        pytest.skip("sshd is not installed")
    with Sandbox() as sb:
        (sb.root / CANARY_DIR_NAME).mkdir()
        (sb.root / CANARY_DIR_NAME).chmod(0o777)
        server = StdioServer(sb, {"AEXP_RELAY_CONTROL_PERSIST": "no"})
        try:
            yield sb, server
        finally:
            server.close()


def payloads(canary: Path) -> list[str]:
    c = str(canary)
    return [
        f"$(touch {c})", f"`touch {c}`", f"x; touch {c}", f"x && touch {c}", f"x | touch {c}",
        f"x > {c}", f"x\ntouch {c}", f"x\0touch {c}", f"x\rtouch {c}", f"'; touch {c}; '",
        f'"; touch {c}; "', f"-oProxyCommand=touch {c}", f"--upload-pack=touch {c}",
        f"--receive-pack=touch {c}", "--force", "--delete", "--mirror", "-f", "--", "-",
        "+main", ":main", "main:other", "../../etc", "/etc/passwd", "~root/x", "x" * 5000, "",
        "mаin", "ma\u200bin", "\u202emain", "main\x1b[31m", "*", "main~1", "main^{}",
        "@{-1}", "refs/heads/../x", "a\\b", " main", "main ", "ma in", "\tmain",
    ]  # fmt: skip


def canaries(sb: Sandbox) -> list[Path]:
    return list((sb.root / CANARY_DIR_NAME).iterdir())


def audit(sb: Sandbox) -> list[dict[str, Any]]:
    if not sb.audit_log.exists():
        return []
    return [json.loads(line) for line in sb.audit_log.read_text().splitlines()]


FIELDS: list[tuple[str, str, Any]] = [
    # (tool, field, how the payload is placed)
    ("airgapped_repo_status", "ssh_host", str),
    ("airgapped_push", "remote", str),
    ("airgapped_push", "branch", str),
    ("airgapped_fetch", "remote", str),
    ("airgapped_wandb_sync", "runs", lambda p: [p]),
]


@pytest.mark.sshd
@pytest.mark.parametrize(("tool", "field", "place"), FIELDS, ids=[f"{t}.{f}" for t, f, _ in FIELDS])
def test_named_corpus_is_refused_with_no_side_effect(
    target: tuple[Sandbox, StdioServer], tool: str, field: str, place: Any
) -> None:
    sb, server = target
    canary = sb.root / CANARY_DIR_NAME / f"{field}-{tool}"
    refs, logins, lines = sb.origin_refs(), sb.logins(), len(audit(sb))
    # An empty ssh_host means "the configured default", which is not a refusal.
    cases = [p for p in payloads(canary) if p or field != "ssh_host"]
    for payload in cases:
        args = {field: place(payload)}
        if tool == "airgapped_wandb_sync":
            args["approve"] = True
        answer = server.call(tool, args)
        assert answer["is_error"] and answer["kind"] == "invalid_request", (payload, answer)
        assert answer["hint"], payload
    assert canaries(sb) == []
    assert sb.origin_refs() == refs
    assert sb.logins() == logins, "a refused call reached ssh"
    new = audit(sb)[lines:]
    assert len(new) == len(cases) and all(e["outcome"] == "rejected" for e in new)
    assert not sb.wandb_log.exists()


@pytest.mark.sshd
def test_repo_paths_reach_the_remote_shell_as_literal_paths(
    target: tuple[Sandbox, StdioServer],
) -> None:
    sb, server = target
    canary = sb.root / CANARY_DIR_NAME / "repo"
    for payload in payloads(canary):
        path = "/tmp/" + payload
        answer = server.call("airgapped_repo_status", {"remote_repo": path})
        assert answer["is_error"], (payload, answer)
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in path) or len(path) > 4096:
            assert answer["kind"] == "invalid_request", (payload, answer)
        else:  # quoted: the remote shell looked for exactly this path, and it does not exist
            assert answer["kind"] in ("repo_missing", "repo_not_dir", "not_a_repo"), (
                payload,
                answer,
            )
    for relative in ["x; touch " + str(canary), "~root/x", "$(touch " + str(canary) + ")", ""]:
        answer = server.call("airgapped_repo_status", {"remote_repo": relative})
        # "" means "use the default": that is allowed and lands on the sandbox clone.
        assert answer["is_error"] == bool(relative), (relative, answer)
    assert canaries(sb) == []


@pytest.mark.sshd
@pytest.mark.parametrize("value", ["30; touch x", "-1", -1, 0, 1e12, True, [1], {"a": 1}, None])
def test_timeout_values_are_numbers_in_range_or_refused(
    target: tuple[Sandbox, StdioServer], value: Any
) -> None:
    _, server = target
    answer = server.call("airgapped_repo_status", {"timeout": value})
    if value is None:
        assert not answer["is_error"]
    else:
        assert answer["is_error"] and answer["kind"] == "invalid_request", (value, answer)


# ------------------------------------------------------------------ hypothesis

text = st.text(st.characters(codec="utf-8", blacklist_categories=("Cs",)), min_size=0, max_size=40)
metachar_text = st.builds(
    lambda a, m, b: a + m + b,
    text,
    st.sampled_from([*";&|`$()<>\n\r\t '\"\\*?[]{}~^:+-!#", "$(", "&&", "||", "--"]),
    text,
)
PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")
HOST_RE = re.compile(
    r"[A-Za-z0-9_.@%][A-Za-z0-9_.@%-]*|([A-Za-z0-9_.-]+@)?[0-9A-Fa-f:]*:[0-9A-Fa-f:]*"
)


@pytest.mark.sshd
@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(field=st.sampled_from(["remote", "branch"]), value=st.one_of(text, metachar_text))
def test_any_branch_or_remote_is_refused_unless_it_is_a_plain_name(
    target: tuple[Sandbox, StdioServer], field: str, value: str
) -> None:
    sb, server = target
    refs = sb.origin_refs()
    answer = server.call("airgapped_push", {field: value})
    plain = bool(PLAIN_NAME.match(value)) and ".." not in value and "//" not in value
    plain = plain and not value.endswith(("/", ".", ".lock")) and len(value) <= 200
    if field == "remote":
        plain = plain and "/" not in value
    if not plain:
        assert answer["is_error"] and answer["kind"] == "invalid_request", (value, answer)
    assert sb.origin_refs() == refs or answer.get("is_error") is False
    assert canaries(sb) == []


@pytest.fixture(scope="module")
def confined(target: tuple[Sandbox, StdioServer]) -> Iterator[StdioServer]:
    """A server allowed only the sandbox host: generated host names that are plain still
    never make a connection (no traffic may leave this machine)."""
    sb, _ = target
    server = StdioServer(sb, {"AEXP_RELAY_ALLOWED_HOSTS": "aexp-sandbox"})
    try:
        yield server
    finally:
        server.close()


@pytest.mark.sshd
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=st.one_of(text, metachar_text))
def test_any_ssh_host_that_is_not_a_plain_destination_is_refused(
    target: tuple[Sandbox, StdioServer], confined: StdioServer, value: str
) -> None:
    sb, _ = target
    logins = sb.logins()
    answer = confined.call("airgapped_status", {"ssh_host": value})
    plain = bool(HOST_RE.fullmatch(value)) and len(value) <= 255
    if value in ("", "aexp-sandbox"):
        assert not answer["is_error"]  # empty means "the configured default"
    elif not plain:
        assert answer["is_error"] and answer["kind"] == "invalid_request", (value, answer)
        assert "AEXP_RELAY_ALLOWED_HOSTS" not in answer["message"], answer
    else:  # a well-formed name, refused by the allowlist before any connection
        assert answer["is_error"] and "AEXP_RELAY_ALLOWED_HOSTS" in answer["message"], answer
        assert sb.logins() == logins
    assert canaries(sb) == []


@pytest.mark.sshd
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=st.one_of(text, metachar_text))
def test_any_run_name_that_is_not_a_bare_offline_run_is_refused(
    target: tuple[Sandbox, StdioServer], value: str
) -> None:
    sb, server = target
    answer = server.call("airgapped_wandb_sync", {"runs": [value], "approve": True})
    bare = bool(re.fullmatch(r"offline-run-[A-Za-z0-9_.-]+", value)) and ".." not in value
    if not bare:
        assert answer["is_error"] and answer["kind"] == "invalid_request", (value, answer)
    assert not sb.wandb_log.exists() or bare
    assert canaries(sb) == []
