"""One name per surface: the MCP server names its tools, the CLI its verbs and flags, the
library its ops; value errors in arguments included."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest

from aexp_relay_mcp import RelayClient, RelayValidationError
from aexp_relay_mcp.sandbox import Sandbox

from .mcp_helpers import data, mcp_session

pytestmark = [pytest.mark.anyio, pytest.mark.sshd]

BARE_OP = re.compile(r"`(repo_status|fetch|pull|rebase|push|wandb_sync|status)`")

# (tool, arguments, kind): every way a call can fail before or after ssh.
MCP_FAILURES: list[tuple[str, dict[str, Any], str]] = [
    ("airgapped_push", {"branch": "--force"}, "invalid_request"),  # a value error
    ("airgapped_push", {"force": True}, "invalid_request"),  # an unknown argument
    ("airgapped_fetch", {"timeout": "30"}, "invalid_request"),  # a wrong type
    ("airgapped_wandb_sync", {"runs": ["../../etc"]}, "invalid_request"),  # a list item
    ("airgapped_status", {"timeout": -1}, "invalid_request"),  # checked by the relay
    ("airgapped_repo_status", {"ssh_host": "-oProxyCommand=x"}, "invalid_request"),
    ("airgapped_repo_status", {"remote_repo": "relative/path"}, "invalid_request"),
    ("airgapped_repo_status", {"remote_repo": "/nonexistent"}, "repo_missing"),
    ("airgapped_pull", {}, "diverged"),
    ("airgapped_push", {}, "non_fast_forward"),
    ("airgapped_wandb_sync", {}, "consent_required"),
]


async def test_every_mcp_error_names_its_tool_and_only_tools(sandbox: Sandbox) -> None:
    sandbox.push_from_other()
    sandbox.commit(sandbox.cluster, "local.txt", "mine\n", "local")
    async with mcp_session(sandbox) as s:
        schemas = {t.name: set(t.input_schema["properties"]) for t in (await s.list_tools()).tools}
        for tool, args, kind in MCP_FAILURES:
            result = await s.call_tool(tool, args)
            err = data(result)
            assert result.is_error and err["kind"] == kind, (tool, args, err)
            assert err["tool"] == tool, err
            said = err["message"] + " " + err["hint"]
            assert not BARE_OP.search(said) and "aexp-relay-mcp " not in said, said
            if kind == "invalid_request" and "accepts:" in err["hint"]:
                listed = err["hint"].split("accepts: ")[1].split(".")[0].split(", ")
                assert set(listed) == schemas[tool], (tool, listed)
            if kind in ("diverged", "non_fast_forward"):
                assert "`airgapped_rebase`" in err["hint"]
            if kind == "consent_required":
                assert "`approve=true`" in err["hint"]


def cli(sb: Sandbox, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **sb.env()}
    return subprocess.run(
        [sys.executable, "-m", "aexp_relay_mcp", *argv],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_every_cli_error_names_its_verb_and_flags(sandbox: Sandbox) -> None:
    sandbox.push_from_other()
    sandbox.commit(sandbox.cluster, "local.txt", "mine\n", "local")
    value = cli(sandbox, "push", "--branch=--force")
    assert value.returncode == 2
    assert value.stderr.startswith("aexp-relay-mcp push: error [invalid_request]"), value.stderr
    assert "`aexp-relay-mcp push` accepts: --remote, --branch, --host, --repo, --timeout" in (
        value.stderr
    )
    repo = cli(sandbox, "repo-status", "--repo", "relative/path")
    assert repo.stderr.startswith("aexp-relay-mcp repo-status: error") and "`--repo`" in repo.stderr
    diverged = cli(sandbox, "pull", "--json")
    body = json.loads(diverged.stdout)
    assert body["command"] == "aexp-relay-mcp pull" and body["kind"] == "diverged"
    assert "`aexp-relay-mcp rebase`" in body["hint"]
    for proc in (value, repo, diverged):
        assert "airgapped_" not in proc.stdout + proc.stderr


async def test_library_errors_name_the_op_and_its_arguments(sandbox: Sandbox) -> None:
    client = RelayClient(config=sandbox.config())
    with pytest.raises(RelayValidationError) as err:
        await client.request("push", {"branch": "--force"})
    assert err.value.op == "push" and err.value.to_dict()["op"] == "push"
    assert "`push` accepts: remote, branch, ssh_host, remote_repo, timeout" in err.value.hint
    assert "airgapped_" not in str(err.value) and "aexp-relay-mcp" not in str(err.value)
