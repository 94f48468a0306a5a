"""Repo paths as cluster docs and users' notes write them: ~, $HOME, ${SCRATCH},
/scratch/$USER. The login shell expands variable references, and nothing else: $(...),
backticks, ${NAME:-x}, $1, $$, quotes and ; stay literal characters of the path. Each
spelling, and each injection attempt inside one, against the real sshd."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from aexp_relay_mcp import RelayClient, RelayConfig, RelayValidationError, RemoteCommandError
from aexp_relay_mcp.adapters.cli.init_command import update_mcp_config
from aexp_relay_mcp.model.results import RepoStatus, WandbPreview
from aexp_relay_mcp.sandbox import Sandbox

from .conftest import running_sandbox

pytestmark = [pytest.mark.anyio, pytest.mark.sshd]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    """One sandbox: these tests only read, and each canary is their own."""
    with running_sandbox() as sb:
        users = sb.remote_dir / "users"
        users.mkdir()
        (users / sb.user.name).symlink_to(sb.cluster)
        (sb.account.home / "exp").symlink_to(sb.cluster)
        yield sb


def spellings(sb: Sandbox) -> dict[str, Path]:
    """Each spelling, and where it must lead."""
    return {
        "~/exp": sb.account.home / "exp",
        "$HOME/exp": sb.account.home / "exp",
        "${HOME}/exp": sb.account.home / "exp",
        "$SCRATCH/cluster": sb.cluster,
        "${SCRATCH}/cluster/": sb.cluster,
        f"{sb.remote_dir}/users/$USER": sb.remote_dir / "users" / sb.user.name,
        f"{sb.remote_dir}/users/${{USER}}": sb.remote_dir / "users" / sb.user.name,
    }


@pytest.mark.parametrize("which", range(7))
async def test_each_spelling_reaches_the_checkout_and_status_shows_it_resolved(
    sandbox: Sandbox, which: int
) -> None:
    path, expected = list(spellings(sandbox).items())[which]
    client = RelayClient(config=sandbox.config(remote_repo=path))
    result = await client.request("repo_status")
    assert isinstance(result, RepoStatus) and result.head == sandbox.head(sandbox.cluster)
    assert result.repo == path  # as given
    status = await client.check_connection()
    assert status.is_git_repo and status.problem is None
    assert status.repo == path and status.repo_resolved == str(expected).rstrip("/")


REFUSED = [
    "$(touch {canary})/exp",  # relative once literal: never reaches a shell
    "`touch {canary}`/exp",
    "$1/exp",
    "${{HOME:-$(touch {canary})}}/exp",
    "${{HOME/exp$(touch {canary})",
    "$ HOME/exp",
    "$HOME/exp\n$(touch {canary})",
    "~root/exp",
    "relative/$HOME",
]


@pytest.mark.parametrize("template", REFUSED)
async def test_a_path_that_is_relative_or_has_control_characters_is_refused_before_ssh(
    sandbox: Sandbox, template: str
) -> None:
    canary = sandbox.remote_dir / f"canary-{REFUSED.index(template)}"
    path = template.format(canary=canary)
    before = sandbox.logins()
    client = RelayClient(config=sandbox.config(remote_repo=path))
    with pytest.raises(RelayValidationError) as err:
        await client.request("repo_status")
    assert "remote_repo" in err.value.hint and repr(path) in err.value.message
    assert sandbox.logins() == before and not canary.exists()


LITERAL = [
    "$HOME/$(touch {canary})",
    "$HOME/`touch {canary}`",
    "/tmp/$$/$(touch {canary})",
    "${{HOME}}`touch {canary}`",
    "$HOME/exp;touch {canary}",
    "$HOME/exp && touch {canary}",
    "$HOME/*",
    "$HOME/exp|touch {canary}",
    "$HOME/'exp'",
    '$HOME/"exp"',
]


@pytest.mark.parametrize("template", LITERAL)
async def test_everything_but_plain_variables_stays_literal_on_the_login_node(
    sandbox: Sandbox, template: str
) -> None:
    canary = sandbox.remote_dir / f"literal-{LITERAL.index(template)}"
    path = template.format(canary=canary)
    client = RelayClient(config=sandbox.config(remote_repo=path))
    with pytest.raises(RemoteCommandError) as err:
        await client.request("repo_status")
    assert err.value.kind == "repo_missing"  # that literal directory does not exist
    assert not canary.exists()


async def test_an_unset_or_empty_variable_is_an_error_that_names_it(sandbox: Sandbox) -> None:
    client = RelayClient(config=sandbox.config(remote_repo="$AEXP_NOT_SET_ANYWHERE/exp"))
    with pytest.raises(RemoteCommandError) as err:
        await client.request("repo_status")
    assert err.value.kind == "path_variable_unset"
    assert "$AEXP_NOT_SET_ANYWHERE" in err.value.message
    status = await client.check_connection()
    assert status.problem == "path_variable_unset" and "$AEXP_NOT_SET_ANYWHERE" in status.hint
    empty = RelayClient(config=sandbox.config(remote_repo="${AEXP_EMPTY}/exp"))
    sandbox.account.home.joinpath(".bashrc").write_text("export AEXP_EMPTY=\n")
    try:
        with pytest.raises(RemoteCommandError) as err:
            await empty.request("repo_status")
    finally:
        sandbox.account.home.joinpath(".bashrc").write_text("")
    assert err.value.kind == "path_variable_unset" and "$AEXP_EMPTY" in err.value.message


async def test_a_variable_that_is_not_absolute_is_refused_on_the_login_node(
    sandbox: Sandbox,
) -> None:
    client = RelayClient(config=sandbox.config(remote_repo="$USER/exp"))
    with pytest.raises(RemoteCommandError) as err:
        await client.request("repo_status")
    assert err.value.kind == "repo_not_absolute"


async def test_the_wandb_dir_and_the_environment_take_the_same_spellings(
    sandbox: Sandbox,
) -> None:
    env = {
        "AEXP_RELAY_REMOTE_REPO": "${SCRATCH}/cluster",
        "AEXP_RELAY_WANDB_DIR": "$SCRATCH/cluster/wandb",
    }
    config = RelayConfig.from_env(env).replace(
        **{k: v for k, v in vars(sandbox.config()).items() if k not in ("remote_repo", "wandb_dir")}
    )
    preview = await RelayClient(config=config).wandb_preview()
    assert isinstance(preview, WandbPreview) and preview.run_count == 2
    assert preview.wandb_dir == "$SCRATCH/cluster/wandb"
    assert preview.commands[0].endswith(
        'sync "${SCRATCH}"/cluster/wandb/offline-run-20260101_120000-run0'
    )
    assert preview.command_template.endswith('sync "${SCRATCH}"/cluster/wandb/<run>')


def test_init_writes_a_braced_variable_so_that_the_mcp_client_leaves_it_alone(
    tmp_path: Path,
) -> None:
    """Claude Code expands ${NAME} in .mcp.json on your machine; $NAME it does not."""
    outcome = update_mcp_config(tmp_path / ".mcp.json", "mycluster", "${SCRATCH}/exp", False)
    env = json.loads(outcome.path.read_text())["mcpServers"]["aexp"]["env"]
    assert env["AEXP_RELAY_REMOTE_REPO"] == "$SCRATCH/exp"
