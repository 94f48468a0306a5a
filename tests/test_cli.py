"""The CLI: every verb and every exit code, in-process (main(argv)) and as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from aexp_relay_mcp.adapters.cli.main import build_parser, main
from aexp_relay_mcp.adapters.cli.surface import OP_VERBS
from aexp_relay_mcp.remote.ops import OPS
from aexp_relay_mcp.sandbox import Sandbox

from .conftest import processes_matching, wait_until

EXE = [sys.executable, "-m", "aexp_relay_mcp"]


@pytest.fixture
def cli_env(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    for key, value in sandbox.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AEXP_RELAY_CONTROL_PERSIST", "no")  # keep masters out of these tests
    return sandbox


def run(args: list[str], sb: Sandbox, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **sb.env(), "AEXP_RELAY_CONTROL_PERSIST": "no"}
    return subprocess.run([*EXE, *args], capture_output=True, text=True, env=env, timeout=60, **kw)  # type: ignore[call-overload, no-any-return]


def test_every_op_in_the_registry_has_a_cli_verb() -> None:
    assert {op for op, _ in OP_VERBS.values()} == set(OPS)


def test_version_prints_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and "aexp-relay-mcp 0." in capsys.readouterr().out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["push", "--no-such-flag"])
    assert exc.value.code == 2
    assert main(["--live"]) == 2


@pytest.mark.sshd
def test_status_and_repo_status_human_and_json(
    cli_env: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "reachable" in out and "on main" in out
    sb = cli_env
    sb.write(sb.cluster / "README.md", "changed\n")
    sb.write(sb.cluster / "new.txt", "x\n")
    assert main(["repo-status"]) == 0
    assert "main ↑0 ↓0, 1 modified, 1 untracked" in capsys.readouterr().out
    assert main(["repo-status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["unstaged_count"] == 1 and data["op"] == "repo_status"


@pytest.mark.sshd
def test_status_of_an_unreachable_host_exits_3(
    cli_env: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--host", "aexp-sandbox-closed"]) == 3
    assert "unreachable" in capsys.readouterr().out
    assert main(["repo-status", "--host", "aexp-sandbox-closed"]) == 3
    assert "connection_refused" in capsys.readouterr().err


@pytest.mark.sshd
def test_fetch_pull_push_rebase_verbs(cli_env: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    sb = cli_env
    sha = sb.push_from_other()
    assert main(["fetch", "--remote", "origin"]) == 0
    assert "origin/main updated" in capsys.readouterr().out
    assert main(["pull"]) == 0
    assert "fast-forwarded" in capsys.readouterr().out and sb.head(sb.cluster) == sha
    sb.push_from_other("b.txt", "b\n")
    sb.commit(sb.cluster, "mine.txt", "mine\n", "mine")
    assert main(["pull"]) == 1
    err = capsys.readouterr().err
    assert "[diverged]" in err and "aexp-relay-mcp rebase" in err
    assert main(["push"]) == 1
    assert "[non_fast_forward]" in capsys.readouterr().err
    assert main(["rebase"]) == 0
    assert "rebased" in capsys.readouterr().out
    assert main(["push", "--remote", "origin", "--branch", "main"]) == 0
    assert "pushed" in capsys.readouterr().out
    assert sb.origin_refs()["refs/heads/main"] == sb.head(sb.cluster)


@pytest.mark.sshd
def test_invalid_arguments_exit_2_and_run_nothing(
    cli_env: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["push", "--branch=--force"]) == 2
    assert "plain git name" in capsys.readouterr().err
    assert main(["repo-status", "--repo", "relative/path"]) == 2
    assert main(["wandb-sync", "--run", "../etc", "--approve"]) == 2
    assert not cli_env.wandb_log.exists()


@pytest.mark.sshd
def test_wandb_sync_previews_with_exit_5_then_uploads_with_approve(
    cli_env: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["wandb-sync"]) == 5
    captured = capsys.readouterr()
    assert "Would upload 2 offline run(s)" in captured.out and "--approve" in captured.out
    assert not cli_env.wandb_log.exists()
    assert main(["wandb-sync", "--run", "offline-run-20260101_120000-run0", "--approve"]) == 0
    assert "uploaded 1 run(s)" in capsys.readouterr().out
    assert cli_env.wandb_log.read_text().split() == [
        "sync", "wandb/offline-run-20260101_120000-run0"
    ]  # fmt: skip


@pytest.mark.sshd
def test_a_timeout_exits_4(cli_env: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    cli_env.git(cli_env.cluster, "config", "remote.origin.uploadpack", "sleep 30; git-upload-pack")
    assert main(["fetch", "--timeout", "1.5"]) == 4
    assert "[timeout]" in capsys.readouterr().err


@pytest.mark.sshd
def test_as_a_subprocess_json_goes_to_stdout_and_codes_match(sandbox: Sandbox) -> None:
    ok = run(["repo-status", "--json"], sandbox)
    assert ok.returncode == 0 and json.loads(ok.stdout)["branch"] == "main"
    consent = run(["wandb-sync", "--json"], sandbox)
    assert consent.returncode == 5
    assert json.loads(consent.stdout)["kind"] == "consent_required"
    bad = run(["push", "--json", "--branch", "a..b"], sandbox)
    assert bad.returncode == 2 and json.loads(bad.stdout)["kind"] == "invalid_request"


@pytest.mark.sshd
def test_ctrl_c_exits_130_and_kills_the_ssh_group(sandbox: Sandbox) -> None:
    sandbox.git(sandbox.cluster, "config", "remote.origin.uploadpack", "sleep 51; git-upload-pack")
    env = {**os.environ, **sandbox.env(), "AEXP_RELAY_CONTROL_PERSIST": "no"}
    proc = subprocess.Popen(
        [*EXE, "fetch"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert wait_until(lambda: processes_matching("sleep 51") != [], 10)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 130
    assert sandbox.processes(masters=False) == []
    assert wait_until(lambda: processes_matching("sleep 51") == [], 6)


def test_cli_verbs_other_than_serve_do_not_import_the_mcp_sdk() -> None:
    code = (
        "import sys\n"
        "from aexp_relay_mcp.adapters.cli.main import main\n"
        "main(['repo-status', '--host', 'no-such-host.invalid', '--repo', '/x'])\n"
        "print('mcp' in sys.modules, 'aexp_relay_mcp.adapters.mcp.server' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "False False"


def test_help_lists_every_verb() -> None:
    text = build_parser().format_help()
    for verb in ["serve", "status", *OP_VERBS, "init", "connect", "disconnect", "sandbox"]:
        assert verb in text


# ------------------------------------------------------------------ init


def init(tmp_path: Path, *extra: str, host: str = "login.hpc.example", repo: str = "~/exp") -> int:
    return main(["init", "--host", host, "--repo", repo,
                 "--mcp-config", str(tmp_path / ".mcp.json"), *extra])  # fmt: skip


def test_init_creates_the_file_with_the_server_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert init(tmp_path) == 0
    data = json.loads((tmp_path / ".mcp.json").read_text())
    entry = data["mcpServers"]["aexp"]
    assert entry["env"] == {
        "AEXP_RELAY_SSH_HOST": "login.hpc.example",
        "AEXP_RELAY_REMOTE_REPO": "~/exp",
    }
    assert entry["command"].endswith("aexp-relay-mcp") or entry["command"] == sys.executable
    out = capsys.readouterr().out
    assert "created" in out and "ControlPersist 10m" in out and "claude mcp add aexp" in out
    assert "ssh-add" in out and "aexp-relay-mcp connect" in out and "/mcp" in out


def test_init_keeps_other_servers_and_keys(tmp_path: Path) -> None:
    other = {"mcpServers": {"github": {"command": "gh-mcp", "env": {"T": "1"}}}, "x": [1, 2]}
    (tmp_path / ".mcp.json").write_text(json.dumps(other))
    assert init(tmp_path) == 0
    data = json.loads((tmp_path / ".mcp.json").read_text())
    assert data["mcpServers"]["github"] == other["mcpServers"]["github"] and data["x"] == [1, 2]
    assert json.loads((tmp_path / ".mcp.json.bak").read_text()) == other


def test_init_twice_with_the_same_values_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert init(tmp_path) == 0
    before = (tmp_path / ".mcp.json").stat().st_mtime_ns
    capsys.readouterr()
    assert init(tmp_path) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert (tmp_path / ".mcp.json").stat().st_mtime_ns == before


def test_init_refuses_conflicting_values_naming_both_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert init(tmp_path) == 0
    before = (tmp_path / ".mcp.json").read_text()
    assert init(tmp_path, host="other.hpc.example") == 2
    err = capsys.readouterr().err
    assert "login.hpc.example" in err and "other.hpc.example" in err and "--force" in err
    assert (tmp_path / ".mcp.json").read_text() == before
    assert init(tmp_path, "--force", host="other.hpc.example") == 0
    data = json.loads((tmp_path / ".mcp.json").read_text())
    assert data["mcpServers"]["aexp"]["env"]["AEXP_RELAY_SSH_HOST"] == "other.hpc.example"


def test_init_refuses_malformed_json_with_its_position_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = '{"mcpServers": {"a": 1,}\n'
    (tmp_path / ".mcp.json").write_text(bad)
    assert init(tmp_path) == 2
    assert "line 1 column" in capsys.readouterr().err
    assert (tmp_path / ".mcp.json").read_text() == bad


def test_init_in_an_unwritable_place_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = main(["init", "--host", "h", "--repo", "/r", "--mcp-config", str(blocker / ".mcp.json")])
    assert code == 2
    assert "Cannot write" in capsys.readouterr().err


def test_init_refuses_hosts_that_could_be_options(tmp_path: Path) -> None:
    assert init(tmp_path, host="-oProxyCommand=touch x") == 2
    assert not (tmp_path / ".mcp.json").exists()


def test_the_printed_ssh_block_parses_with_ssh_G(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert init(tmp_path, host="me@login.hpc.example") == 0
    out = capsys.readouterr().out
    block = out.split("Add this to ~/.ssh/config (if the host has no block yet):\n\n", 1)[1]
    block = block.split("\nNext steps:", 1)[0]
    (tmp_path / "ssh_config").write_text(block)
    parsed = subprocess.run(
        ["ssh", "-G", "-F", str(tmp_path / "ssh_config"), "login.hpc.example"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert parsed.returncode == 0, parsed.stderr
    assert "user me" in parsed.stdout and "controlpersist 600" in parsed.stdout
    assert "serveraliveinterval 30" in parsed.stdout


@pytest.mark.sshd
def test_init_check_runs_the_connection_check(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("AEXP_RELAY_SSH_CONFIG", str(sandbox.ssh_config))
    monkeypatch.setenv("AEXP_RELAY_AUDIT_LOG", str(sandbox.audit_log))
    monkeypatch.setenv("AEXP_RELAY_CONTROL_PERSIST", "no")
    assert init(tmp_path, "--check", host="aexp-sandbox", repo=str(sandbox.cluster)) == 0
    assert "reachable" in capsys.readouterr().out


# ------------------------------------------------------------------ connect / disconnect


@pytest.mark.sshd
def test_connect_opens_a_shared_connection_that_calls_reuse_and_disconnect_closes_it(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in sandbox.env().items():
        monkeypatch.setenv(key, value)
    assert main(["connect"]) == 0
    assert "Connected" in capsys.readouterr().out
    assert len(sandbox.processes(masters=True)) == 1
    before = sandbox.logins()
    assert main(["repo-status"]) == 0
    assert sandbox.logins() == before
    assert main(["connect"]) == 0
    assert "already up" in capsys.readouterr().out
    assert main(["disconnect"]) == 0
    assert "Closed" in capsys.readouterr().out
    assert wait_until(lambda: sandbox.processes(masters=True) == [], 3)
    assert main(["disconnect"]) == 0


def test_colour_only_on_a_tty_and_never_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    from aexp_relay_mcp.adapters.cli.main import _style

    class Stream:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert _style(Stream(True)).bad("x") == "\033[31mx\033[0m"
    assert _style(Stream(False)).bad("x") == "x"
    monkeypatch.setenv("NO_COLOR", "1")
    assert _style(Stream(True)).bad("x") == "x"


def test_ssh_missing_on_this_machine_is_a_clear_unreachable_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AEXP_RELAY_SSH_BIN", "/nonexistent/ssh")
    monkeypatch.setenv("AEXP_RELAY_AUDIT_LOG", "/dev/null")
    code = main(["repo-status", "--host", "h", "--repo", "/r"])
    assert code == 3 and "ssh_missing" in capsys.readouterr().err


def test_printed_commands_keep_a_remote_tilde_path_unexpanded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert init(tmp_path, repo="~/projects/exp") == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "claude mcp add" in x)
    env = {**os.environ, "HOME": "/local/home"}
    echoed = subprocess.run(
        ["bash", "-c", "printf '%s\\n' " + line.strip().removeprefix("claude mcp add ")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert "AEXP_RELAY_REMOTE_REPO=~/projects/exp" in echoed.stdout.splitlines()
    assert "/local/home" not in echoed.stdout


def test_an_install_holds_every_package_of_the_source_tree() -> None:
    """A non-editable install (pip install ., pipx) must have what the source tree has: a
    subpackage missing from the build once broke `--selftest` for every pipx user, while
    editable installs hid it. setuptools resolves pyproject.toml's package list offline."""
    import warnings

    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    root = Path(__file__).parent.parent
    cwd = os.getcwd()
    os.chdir(root)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            packaged = set(apply_configuration(Distribution(), "pyproject.toml").packages)
    finally:
        os.chdir(cwd)
    source = {
        ".".join(p.parent.relative_to(root).parts)
        for p in (root / "aexp_relay_mcp").rglob("__init__.py")
    }
    assert source == packaged, (sorted(source), sorted(packaged))


def test_sandbox_realistic_is_the_sandbox_s_own_flag_not_the_selftest_s() -> None:
    args = build_parser().parse_args(["sandbox", "--realistic"])
    assert args.sandbox_realistic is True and args.realistic is False
    assert main(["--realistic"]) == 2  # without --selftest it means nothing


@pytest.mark.parametrize("verb", ["connect", "disconnect"])
def test_connect_without_a_host_says_how_to_name_one(
    verb: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AEXP_RELAY_SSH_HOST", raising=False)
    assert main([verb]) == 2
    err = capsys.readouterr().err
    assert f"aexp-relay-mcp {verb} mycluster" in err and "ssh_host" not in err
