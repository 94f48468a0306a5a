"""The failures login nodes really have each get a kind, a message, and a hint that names
the real host, path and command. Each is produced for real in the sandbox."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from aexp_relay_mcp import RelayClient, RelayDownError, RemoteCommandError
from aexp_relay_mcp.sandbox import UNKNOWNKEY_ALIAS, Sandbox, SandboxError

from .conftest import running_sandbox, snapshot

pytestmark = [pytest.mark.anyio, pytest.mark.sshd]

UNREACHABLE_ORIGIN = "https://git.aexp-sandbox.invalid/lab/experiment.git"


def needs_root_and_a_login_user(sb: Sandbox) -> None:
    if os.geteuid() != 0 or sb.user.uid == 0:
        pytest.skip("needs root, to give files to another account")


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with running_sandbox() as sb:
        yield sb


async def test_a_full_disk_is_disk_full_with_where_to_look_and_nothing_changed(
    sandbox: Sandbox,
) -> None:
    needs_root_and_a_login_user(sandbox)
    try:
        small = sandbox.small_filesystem(2048)
        where = small.__enter__()
    except SandboxError as exc:
        pytest.skip(str(exc))
    try:
        clone = sandbox.repos.clone(where / "exp")
        sandbox.push_from_other("weights.bin", os.urandom(600 * 1024).hex())
        sandbox.fill(where, leave_kb=64)
        before = snapshot(sandbox, clone)
        client = RelayClient(config=sandbox.config(remote_repo=str(clone)))
        for op in ("fetch", "pull"):
            with pytest.raises(RemoteCommandError) as err:
                await client.request(op)
            assert err.value.kind == "disk_full", err.value
            assert f"df -h {clone}" in err.value.hint and "quota -s" in err.value.hint
            assert "No space left on device" in err.value.stderr_tail
            assert "state as_before" not in err.value.stderr_tail  # the relay's own report
            assert snapshot(sandbox, clone) == before
        assert err.value.details["checkout"] == "as_before"
    finally:
        small.__exit__(None, None, None)


async def test_a_rebase_without_a_git_identity_says_which_config_lines_to_run(
    sandbox: Sandbox,
) -> None:
    sandbox.push_from_other()
    sandbox.commit(sandbox.cluster, "local.txt", "mine\n", "local work")
    sandbox.forget_identity()
    before = snapshot(sandbox, sandbox.cluster)
    client = RelayClient(config=sandbox.config())
    with pytest.raises(RemoteCommandError) as err:
        await client.request("rebase")
    assert err.value.kind == "git_identity_missing"
    hint = err.value.hint
    assert 'git config --global user.name "Your Name"' in hint
    assert 'git config --global user.email "you@example.org"' in hint
    assert "aexp-sandbox" in hint and "`rebase`" in hint
    assert snapshot(sandbox, sandbox.cluster) == before


async def test_a_fast_forward_needs_no_identity(sandbox: Sandbox) -> None:
    up = sandbox.push_from_other()
    sandbox.forget_identity()
    client = RelayClient(config=sandbox.config())
    assert (await client.request("rebase")).after.head == up  # type: ignore[attr-defined]


async def test_objects_another_member_owns_are_repo_permission_denied(sandbox: Sandbox) -> None:
    needs_root_and_a_login_user(sandbox)
    sandbox.push_from_other()
    sandbox.lock_objects()
    before = snapshot(sandbox, sandbox.cluster)
    client = RelayClient(config=sandbox.config())
    for op in ("fetch", "pull", "rebase"):
        with pytest.raises(RemoteCommandError) as err:
            await client.request(op)
        assert err.value.kind == "repo_permission_denied", (op, err.value)
        assert f"find {sandbox.cluster}/.git ! -writable" in err.value.hint
        assert "core.sharedRepository group" in err.value.hint
    assert snapshot(sandbox, sandbox.cluster) == before


@pytest.mark.realism
async def test_a_proxy_set_only_for_interactive_shells_is_named_with_the_fix() -> None:
    """The noisy login node's ~/.bashrc exports https_proxy below its interactive-only
    guard, as cluster docs often have it: ssh commands never get it."""
    with running_sandbox(profile="noisy") as sb:
        sb.git(sb.cluster, "remote", "set-url", "origin", UNREACHABLE_ORIGIN)
        client = RelayClient(config=sb.config())
        for op in ("fetch", "pull", "push"):
            with pytest.raises(RemoteCommandError) as err:
                await client.request(op)
            assert err.value.kind == "origin_needs_proxy", (op, err.value)
            assert f"{sb.account.home}/.bashrc" in err.value.message
            hint = err.value.hint
            assert "git config --global http.proxy http://proxy.aexp-sandbox.invalid:3128" in hint
            assert "aexp-sandbox" in hint


async def test_an_unreachable_origin_without_a_proxy_in_sight_stays_origin_unreachable(
    sandbox: Sandbox,
) -> None:
    sandbox.git(sandbox.cluster, "remote", "set-url", "origin", UNREACHABLE_ORIGIN)
    with pytest.raises(RemoteCommandError) as err:
        await RelayClient(config=sandbox.config()).request("fetch")
    assert err.value.kind == "origin_unreachable"
    assert f"git -C {sandbox.cluster} remote -v" in err.value.hint


async def test_the_unknown_host_key_hint_names_the_host(sandbox: Sandbox) -> None:
    client = RelayClient(config=sandbox.config(ssh_host=UNKNOWNKEY_ALIAS))
    with pytest.raises(RelayDownError) as err:
        await client.request("repo_status")
    assert err.value.kind == "host_key_unknown"
    assert f"`ssh {UNKNOWNKEY_ALIAS}`" in err.value.hint and "<host>" not in err.value.hint
