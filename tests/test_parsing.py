"""Pure parsing of git, ssh and wandb output, and the audit log."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from aexp_relay_mcp.model.errors import RemoteCommandError, Surface, args_placeholder, render_hint
from aexp_relay_mcp.model.text import clean_text, redact, tail
from aexp_relay_mcp.relay.audit import AuditLog
from aexp_relay_mcp.remote.failures import classify_git_failure
from aexp_relay_mcp.remote.ops import op_arguments
from aexp_relay_mcp.remote.output import parse_script_output
from aexp_relay_mcp.remote.parsing import (
    parse_push_porcelain,
    parse_status_records,
    unquote_path,
)
from aexp_relay_mcp.ssh.failures import classify_ssh_failure

SHA1 = "a" * 40
SHA2 = "b" * 40
ZERO = (0, 0, 0, 0)


def test_status_z_parses_branch_upstream_and_every_kind_of_entry() -> None:
    records = [
        f"# branch.oid {SHA1}",
        "# branch.head feat/x",
        "# branch.upstream origin/feat/x",
        "# branch.ab +2 -3",
        f"1 M. N... 100644 100644 100644 {SHA1} {SHA1} staged file.py",
        f"1 .M N... 100644 100644 100644 {SHA1} {SHA1} unstaged.py",
        f"2 R. N... 100644 100644 100644 {SHA1} {SHA1} R100 new name.py\told name.py",
        f"u UU N... 100644 100644 100644 100644 {SHA1} {SHA1} {SHA1} both.py",
        "? untracked dir/file.txt",
    ]
    parsed = parse_status_records(records, (2, 1, 1, 1))
    s = parsed.state
    assert (s.branch, s.head, s.upstream, s.ahead, s.behind) == (
        "feat/x", SHA1, "origin/feat/x", 2, 3
    )  # fmt: skip
    assert [e.path for e in parsed.staged] == ["staged file.py", "new name.py"]
    assert parsed.staged[1].orig_path == "old name.py"
    assert [e.path for e in parsed.unstaged] == ["unstaged.py"]
    assert parsed.conflicted == ["both.py"]
    assert parsed.untracked == ["untracked dir/file.txt"]
    assert parsed.counts == (2, 1, 1, 1) and not parsed.truncated


def test_status_of_detached_and_unborn_heads() -> None:
    detached = parse_status_records([f"# branch.oid {SHA1}", "# branch.head (detached)"], ZERO)
    assert detached.state.branch is None and detached.state.head == SHA1
    unborn = parse_status_records(["# branch.oid (initial)", "# branch.head main"], ZERO)
    assert unborn.state.head is None and unborn.state.ahead is None


def test_control_characters_in_file_names_are_escaped_never_passed_raw() -> None:
    parsed = parse_status_records(
        ["# branch.head m\x1b[31main", "? evil\x1b]0;pwned\x07.txt"], ZERO
    )
    assert parsed.untracked == ["evil\\x1b]0;pwned\\x07.txt"]
    assert parsed.state.branch == "m\\x1b[31main"
    assert clean_text("a\nb", keep_newlines=True) == "a\nb"


def test_push_porcelain_statuses() -> None:
    text = (
        "To /srv/origin.git\n"
        "=\trefs/heads/a:refs/heads/a\t[up to date]\n"
        " \trefs/heads/b:refs/heads/b\taaa..bbb\n"
        "*\trefs/heads/c:refs/heads/c\t[new branch]\n"
        "!\trefs/heads/d:refs/heads/d\t[rejected] (fetch first)\n"
        "!\trefs/heads/e:refs/heads/e\t[remote rejected] (pre-receive hook declined)\n"
        "Done\n"
    )
    assert [r.status for r in parse_push_porcelain(text)] == [
        "up_to_date", "ok", "new", "rejected", "remote_rejected"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("stderr", "kind"),
    [
        ("ssh: connect to host 127.0.0.1 port 1: Connection refused", "connection_refused"),
        ("ssh: Could not resolve hostname x: Name or service not known", "unresolvable_host"),
        ("u@127.0.0.1: Permission denied (publickey).", "auth_failed"),
        (
            "@@@\nWARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!\nHost key verification failed.",
            "host_key_changed",
        ),
        ("No ED25519 host key is known for x\nHost key verification failed.", "host_key_unknown"),
        ("Connection to 127.0.0.1 closed by remote host.", "connection_dropped"),
        ("ssh: connect to host x port 22: Connection timed out", "connection_timeout"),
        ("", "unreachable"),
    ],
)
def test_ssh_failures_are_classified_from_stderr(stderr: str, kind: str) -> None:
    assert classify_ssh_failure(stderr).kind == kind


@pytest.mark.parametrize(
    ("stderr", "kind"),
    [
        ("fatal: detected dubious ownership in repository at '/r'", "dubious_ownership"),
        ("fatal: not a git repository (or any of the parent directories): .git", "not_a_repo"),
        ("fatal: Not possible to fast-forward, aborting.", "diverged"),
        (
            "error: Your local changes to the following files would be overwritten by merge:",
            "dirty_worktree",
        ),
        ("error: cannot pull with rebase: You have unstaged changes.", "dirty_worktree"),
        (" ! [rejected]        main -> main (fetch first)", "non_fast_forward"),
        (" ! [remote rejected] main -> main (pre-receive hook declined)", "push_rejected"),
        ("git@github.com: Permission denied (publickey).", "auth_to_origin_failed"),
        ("fatal: could not read Username for 'https://github.com'", "auth_to_origin_failed"),
        ("fatal: unable to access 'https://x/': Could not resolve host: x", "origin_unreachable"),
        ("There is no tracking information for the current branch.", "no_upstream"),
        ("fatal: Unable to create '/r/.git/index.lock': File exists.", "locked"),
        ("sh: 1: git: not found", "git_missing"),
        ("something else entirely", "command_failed"),
    ],
)
def test_git_failures_are_classified_with_a_hint(stderr: str, kind: str) -> None:
    failure = classify_git_failure(stderr, 1)
    assert failure.kind == kind and failure.hint


MCP_LIKE = Surface("mcp", "tool", lambda op: f"airgapped_{op}", lambda arg: arg)
CLI_LIKE = Surface("cli", "command", lambda op: f"aexp-relay-mcp {op}", lambda arg: f"--{arg}")


def test_hints_name_the_next_op_in_each_surface_s_own_words() -> None:
    hint = classify_git_failure("fatal: Not possible to fast-forward, aborting.", 1).hint
    assert "`rebase`" in render_hint(hint)
    assert "airgapped_rebase" in render_hint(hint, MCP_LIKE)
    err = RemoteCommandError(
        "m", kind="diverged", hint=hint, exit_code=128, stderr_tail="t", op="pull"
    )
    data = err.to_dict(MCP_LIKE)
    assert data["kind"] == "diverged" and "airgapped_rebase" in data["hint"]
    assert data["tool"] == "airgapped_pull"
    assert data["exit_code"] == 128 and data["stderr_tail"] == "t"


def test_argument_placeholders_use_each_surface_s_names() -> None:
    # The registry writes an op's arguments into the placeholder; the error tree knows no op.
    hint = f"Pass {{arg:ssh_host}}. {{op:push}} accepts: {args_placeholder(op_arguments('push'))}."
    assert (
        render_hint(hint)
        == "Pass `ssh_host`. `push` accepts: remote, branch, ssh_host, remote_repo, timeout."
    )
    assert render_hint(hint, CLI_LIKE).startswith(
        "Pass `--ssh_host`. `aexp-relay-mcp push` accepts: --remote"
    )


def test_credentials_in_urls_are_redacted_from_error_output() -> None:
    assert (
        redact("fatal: https://user:ghp_secret@github.com/x") == "fatal: https://***@github.com/x"
    )
    assert "ghp_secret" not in tail("remote: https://ghp_secret@github.com/x.git\n")


def test_markers_from_a_spoofing_command_without_the_nonce_are_not_trusted() -> None:
    out = parse_script_output(
        "\n@AEXP-ffffffffffffffff@ exit 0\n",
        "\n@AEXP-ffffffffffffffff@ exit 0\n",
        "0123456789abcdef",
    )
    assert out.exit_code is None


def test_audit_log_is_jsonl_mode_0600_and_appends(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "sub" / "audit.log")
    log.record(request_id="r1", op="push", args={"branch": "main"}, outcome="ok")
    log.record(request_id="r2", op="pull", outcome="failed", kind="diverged", exit_code=128)
    lines = [json.loads(x) for x in (tmp_path / "sub" / "audit.log").read_text().splitlines()]
    assert [x["request_id"] for x in lines] == ["r1", "r2"]
    assert lines[1]["kind"] == "diverged" and lines[0]["args"] == {"branch": "main"}
    assert stat.S_IMODE(os.stat(tmp_path / "sub" / "audit.log").st_mode) == 0o600


def test_unwritable_audit_log_warns_once_and_never_raises(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    log = AuditLog(blocker / "audit.log")  # parent is a file: cannot be created
    log.record(request_id="r1", op="pull", outcome="ok")
    log.record(request_id="r2", op="pull", outcome="ok")
    err = capsys.readouterr().err
    assert err.count("cannot write the audit log") == 1
    assert "AEXP_RELAY_AUDIT_LOG" in err


def test_reference_doc_is_generated_from_the_current_registry() -> None:
    from aexp_relay_mcp.adapters.reference import render_reference_markdown

    doc = Path(__file__).parent.parent / "docs" / "reference.md"
    assert doc.read_text() == render_reference_markdown(), (
        "docs/reference.md is stale: run "
        "`python -m aexp_relay_mcp.adapters.reference > docs/reference.md`"
    )


def test_every_test_the_security_model_cites_exists() -> None:
    """docs/security.md points each guarantee at a test; the pointers must not rot."""
    import re

    root = Path(__file__).parent.parent
    text = (root / "docs" / "security.md").read_text()
    current = None
    cited = 0
    for match in re.finditer(r"`(tests/[\w/]+\.py)?::(\w+)`", text):
        current = match.group(1) or current
        assert current is not None
        source = (root / current).read_text()
        assert f"def {match.group(2)}(" in source, f"{current}::{match.group(2)} is missing"
        cited += 1
    assert cited >= 30


@pytest.mark.parametrize(
    ("printed", "path"),
    [
        ("plain name.txt", "plain name.txt"),
        ('"tab\\there"', "tab\there"),
        ('"new\\nline and \\"quotes\\" and \\\\"', 'new\nline and "quotes" and \\'),
        ('"bell\\a \\303\\274"', "bell\a ü"),  # octal bytes: UTF-8 back together
        ('"ünïcödé raw"', "ünïcödé raw"),
        ('"', '"'),
    ],
)
def test_a_path_git_quoted_reads_back_as_the_path(printed: str, path: str) -> None:
    assert unquote_path(printed) == path
