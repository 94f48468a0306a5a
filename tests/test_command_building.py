"""Pure command building: quoting proved with a real sh, validation before any process."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aexp_relay_mcp import RelayClient, RelayConfig, RelayValidationError, validate_request
from aexp_relay_mcp.model.targets import path_parts, validate_host, validate_repo
from aexp_relay_mcp.remote.ops import OPS, SHARED_UMASK, BuildContext, build_check
from aexp_relay_mcp.remote.output import parse_script_output
from aexp_relay_mcp.remote.quoting import quote, quote_path
from aexp_relay_mcp.remote.script import Script, build_remote_command, step
from aexp_relay_mcp.ssh.argv import build_ssh_argv

NONCE = "0123456789abcdef"
# Anything a shell word can hold: everything but NUL.
shell_text = st.text(st.characters(blacklist_characters="\0", codec="utf-8"), max_size=60)


def login_node_command(body: Script, repo: str = "/") -> str:
    """What the login node runs for body: the start marker, then the bounded script."""
    return build_remote_command(body, repo, NONCE, timeout=30, grace=1)


def run_sh(command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["sh", "-c", command], capture_output=True, env=env, timeout=10)


@settings(max_examples=300, deadline=None)
@given(shell_text)
def test_quote_makes_sh_see_exactly_the_word(word: str) -> None:
    out = run_sh("printf '%s' " + quote(word)).stdout
    assert out == word.encode()


@settings(max_examples=200, deadline=None)
@given(st.lists(shell_text, min_size=1, max_size=5))
def test_a_step_passes_sh_exactly_the_intended_argv(argv: list[str]) -> None:
    body = Script(step("echo", "printf", "%s\\0", *argv))
    proc = run_sh(login_node_command(body))
    out = parse_script_output(proc.stdout.decode(), proc.stderr.decode(), NONCE)
    assert out.exit_code == 0
    section = out.section("echo")
    assert section is not None
    assert section.stdout.split("\0")[:-1] == argv


# What the login shell of these tests has: $NAME references expand to these (or to "").
SHELL_ENV = {"HOME": "/home/researcher", "SCRATCH": "/scratch/r e*s", "USER": "me"}


def expanded(path: str) -> str:
    """path as the login shell must see it: ~/ and $NAME / ${NAME} expanded, nothing else."""
    return "".join(
        SHELL_ENV["HOME"] + "/"[: len(text) - 1]
        if kind == "home"
        else SHELL_ENV.get(text, "")
        if kind == "var"
        else text
        for kind, text in path_parts(path)
    )


def shell_env() -> dict[str, str]:
    return {**SHELL_ENV, "PATH": os.environ["PATH"]}


@settings(max_examples=200, deadline=None)
@given(shell_text.filter(lambda s: not any(ord(c) < 32 or ord(c) == 127 for c in s)))
def test_repo_path_reaches_the_remote_shell_literally(tail: str) -> None:
    """Every character literal, but $NAME and ${NAME}: those the login shell expands
    (never split or globbed)."""
    path = "/" + tail
    out = run_sh("printf '%s' " + quote_path(path), env=shell_env()).stdout
    assert out == expanded(path).encode()


@settings(max_examples=100, deadline=None)
@given(shell_text.filter(lambda s: "\n" not in s and not s.startswith("/")))
def test_tilde_repo_path_expands_home_and_keeps_the_rest_literal(rest: str) -> None:
    out = run_sh("printf '%s' " + quote_path("~/" + rest), env=shell_env()).stdout
    assert out == expanded("~/" + rest).encode()
    if "$" not in rest:
        assert out == ("/home/researcher/" + rest).encode()


@pytest.mark.parametrize(
    ("path", "seen"),
    [
        ("$SCRATCH/exp", "/scratch/r e*s/exp"),
        ("${SCRATCH}/exp", "/scratch/r e*s/exp"),
        ("/scratch/$USER/exp", "/scratch/me/exp"),
        ("${HOME}x/$USERy", "/home/researcherx/"),
        ("/x/$(touch y)/${HOME:-z}/`id`/$1/$$", "/x/$(touch y)/${HOME:-z}/`id`/$1/$$"),
    ],
)
def test_variables_expand_and_every_other_dollar_stays_literal(path: str, seen: str) -> None:
    assert run_sh("printf '%s' " + quote_path(path), env=shell_env()).stdout == seen.encode()


def test_remote_command_reports_pid_and_exit_status_through_markers() -> None:
    body = Script(step("fail", "sh", "-c", "echo out; echo err >&2; exit 255"))
    command = build_remote_command(body, "/", NONCE, timeout=5, grace=1)
    proc = run_sh(command)
    out = parse_script_output(proc.stdout.decode(), proc.stderr.decode(), NONCE)
    assert out.exit_code == 255 and out.remote_pid is not None
    section = out.section("fail")
    assert section is not None and section.stdout == "out\n" and section.stderr == "err\n"
    assert "@AEXP-" not in out.stdout + out.stderr


def test_remote_command_is_bounded_by_timeout_on_the_remote_side() -> None:
    body = Script(step("slow", "sleep", "30"))
    command = build_remote_command(body, "/", NONCE, timeout=1, grace=1)
    proc = subprocess.run(["sh", "-c", command], capture_output=True, timeout=15)
    out = parse_script_output(proc.stdout.decode(), proc.stderr.decode(), NONCE)
    assert out.exit_code is None  # killed before it could report
    assert proc.returncode in (124, 137)


def test_the_remote_environment_disables_prompts_and_pins_the_locale() -> None:
    body = Script(
        step(
            "env",
            "sh",
            "-c",
            'printf "%s|%s|%s" "$GIT_TERMINAL_PROMPT" "$GIT_SSH_COMMAND" "$LC_ALL"',
        )
    )
    proc = run_sh(login_node_command(body))
    out = parse_script_output(proc.stdout.decode(), proc.stderr.decode(), NONCE)
    section = out.section("env")
    assert section is not None
    assert section.stdout == "0|ssh -o BatchMode=yes|C"


def test_missing_repo_is_reported_by_kind_not_by_shell_wording() -> None:
    proc = run_sh(login_node_command(Script("true"), "/nonexistent/aexp"))
    out = parse_script_output(proc.stdout.decode(), proc.stderr.decode(), NONCE)
    assert (out.kind, out.exit_code) == ("repo_missing", 3)


def test_ssh_argv_has_no_stdin_batch_mode_and_ends_options_before_the_host() -> None:
    argv = build_ssh_argv(
        ssh_bin="ssh", host="login", remote_command="true", connect_timeout=7, ssh_config="/c"
    )
    assert argv[:3] == ["ssh", "-n", "-T"]
    assert "BatchMode=yes" in argv and "ConnectTimeout=7" in argv
    assert argv[argv.index("-F") + 1] == "/c"
    assert argv[-3:] == ["--", "login", "true"]
    assert "-vv" not in argv


def test_verbose_ssh_writes_debug_to_a_file_never_to_stderr() -> None:
    argv = build_ssh_argv(
        ssh_bin="ssh", host="h", remote_command="true", connect_timeout=5, verbose_log=__file__
    )  # type: ignore[arg-type]
    assert argv[argv.index("-E") + 1] == __file__ and "-vv" in argv


@pytest.mark.parametrize(
    "host",
    [
        "-oProxyCommand=touch /tmp/x",
        "--",
        "-p22",
        "host; rm -rf /",
        "host name",
        "host\nname",
        "$(touch x)",
        "`id`",
        "a|b",
        "a>b",
        "",
        "h" * 300,
        "hóst",
        "+main",
        "main:other",
        "[::1]",
        "h/x",
        "ssh://h",
    ],
)
def test_hosts_that_ssh_or_a_shell_could_misread_are_refused(host: str) -> None:
    with pytest.raises(RelayValidationError) as err:
        validate_host(host)
    assert err.value.hint


@pytest.mark.parametrize(
    "host", ["login1", "me@login.hpc.example.org", "alias_2", "::1", "me@fe80::1"]
)
def test_ordinary_hosts_are_accepted(host: str) -> None:
    assert validate_host(host) == host


@pytest.mark.parametrize(
    "repo", ["relative/path", "~user/repo", "", "/a\nb", "/a\0b", "/a\x1b[31m", "/" + "a" * 5000]
)
def test_repo_paths_must_be_absolute_or_home_relative_and_printable(repo: str) -> None:
    with pytest.raises(RelayValidationError):
        validate_repo(repo)


BAD_NAMES = [
    "--force",
    "-f",
    "--delete",
    "--mirror",
    "--upload-pack=touch x",
    "+main",
    ":main",
    "main:other",
    "a..b",
    "a b",
    "a\tb",
    "a\nb",
    "main~1",
    "main^",
    "ma?n",
    "ma*n",
    "ma[n",
    "a\\b",
    "main.lock",
    "main/",
    "/main",
    ".hidden",
    "a//b",
    "@{-1}",
    "$(id)",
    "`id`",
    "a;b",
    "",
    "x" * 201,
    "mаin",  # Cyrillic a
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_branch_names_that_are_not_plain_git_names_are_refused(name: str) -> None:
    with pytest.raises(RelayValidationError) as err:
        validate_request("push", {"branch": name})
    assert "plain git name" in err.value.message or "branch" in err.value.message


@pytest.mark.parametrize("name", [*BAD_NAMES, "origin/x"])
def test_remote_names_that_are_not_plain_names_are_refused(name: str) -> None:
    with pytest.raises(RelayValidationError):
        validate_request("push", {"remote": name})
    with pytest.raises(RelayValidationError):
        validate_request("fetch", {"remote": name})


@pytest.mark.parametrize("branch", ["main", "feature/lr-sweep", "v1.2_rc-3", "HEAD"])
def test_plain_branch_names_are_accepted(branch: str) -> None:
    _, args = validate_request("push", {"branch": branch})
    assert args.branch == branch  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "run",
    [
        "../offline-run-x",
        "offline-run-x/../../etc",
        "/abs/offline-run-x",
        "run-20260101",
        "offline-run-",
        "offline-run-a b",
        "offline-run-$(id)",
        "-offline-run-x",
        "offline-run-a..b",
    ],
)
def test_wandb_runs_must_be_bare_offline_run_names(run: str) -> None:
    with pytest.raises(RelayValidationError) as err:
        validate_request("wandb_sync", {"runs": [run]})
    assert "offline-run-" in err.value.message


def test_unknown_ops_and_extra_args_are_refused_with_what_is_allowed() -> None:
    with pytest.raises(RelayValidationError) as err:
        validate_request("exec", {})
    assert "repo_status" in err.value.hint
    with pytest.raises(RelayValidationError) as err:
        validate_request("push", {"force": True})
    assert "unknown argument 'force'" in err.value.message
    assert "remote, branch" in err.value.hint
    with pytest.raises(RelayValidationError):
        validate_request("pull", {"rebase": True})


def test_wandb_runs_must_be_a_list_not_a_string() -> None:
    with pytest.raises(RelayValidationError):
        validate_request("wandb_sync", {"runs": "offline-run-x"})


class RecordingRunner:
    def __init__(self) -> None:
        self.calls: list[Sequence[str]] = []

    async def __call__(self, argv: Sequence[str], **kw: Any) -> Any:
        self.calls.append(argv)
        raise AssertionError("a refused request must never start a process")


REFUSED: list[tuple[str, dict[str, Any] | None, dict[str, Any]]] = [
    ("exec", None, {}),
    ("push", {"branch": "--force"}, {}),
    ("push", {"remote": "-oProxyCommand=x"}, {}),
    ("fetch", {"remote": "--upload-pack=touch /tmp/x"}, {}),
    ("wandb_sync", {"runs": ["../x"]}, {"approve": True}),
    ("repo_status", None, {"ssh_host": "-oProxyCommand=touch /tmp/x"}),
    ("repo_status", None, {"remote_repo": "relative"}),
    ("repo_status", None, {"timeout": -1}),
    ("repo_status", None, {"timeout": float("nan")}),
    ("wandb_sync", None, {"approve": "yes"}),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("op", "args", "kw"), REFUSED)
async def test_refused_requests_start_no_process(
    op: str, args: dict[str, Any] | None, kw: dict[str, Any], tmp_path: Any
) -> None:
    runner = RecordingRunner()
    client = RelayClient(
        config=RelayConfig(ssh_host="h", remote_repo="/r", audit_log=tmp_path / "a.log"),
        runner=runner,
    )
    with pytest.raises(RelayValidationError):
        await client.request(op, args, **kw)
    assert runner.calls == []
    assert '"outcome": "rejected"' in (tmp_path / "a.log").read_text()


def test_every_op_declares_its_flags_and_timeout() -> None:
    assert set(OPS) == {"repo_status", "fetch", "pull", "rebase", "push", "wandb_sync"}
    assert [n for n, s in OPS.items() if s.consent] == ["wandb_sync"]
    assert [n for n, s in OPS.items() if not s.mutating] == ["repo_status"]
    assert OPS["wandb_sync"].default_timeout == 600
    assert {s.default_timeout for n, s in OPS.items() if n != "wandb_sync"} == {60}
    for spec in OPS.values():
        assert spec.args_model.model_config.get("extra") == "forbid"


def test_push_never_builds_a_forcing_deleting_or_mirroring_command() -> None:
    ctx = BuildContext(repo="/r", wandb_words=("wandb",))
    for branch in ("HEAD", "main", "feature/x"):
        _, args = validate_request("push", {"branch": branch})
        text = OPS["push"].build(args, ctx).text
        for bad in ("--force", " -f ", "--delete", "--mirror", "+refs", " +", "--all", "--tags"):
            assert bad not in text


def test_check_script_without_repo_does_not_enter_one() -> None:
    text = build_check(BuildContext(repo="", wandb_words=("wandb",))).text
    assert "cd --" not in text


@pytest.mark.parametrize(
    ("shared", "umask"),
    [
        ("", "0022"),  # not shared: the member's own umask
        ("umask", "0022"),
        ("group", "0002"),
        ("true", "0002"),
        ("all", "0002"),
        ("0660", "0007"),
        ("0640", "0027"),
        ("664", "0002"),
    ],
)
def test_a_shared_checkout_s_setting_decides_the_ops_umask(
    shared: str, umask: str, tmp_path: Path
) -> None:
    """git's own core.sharedRepository, whatever the member's umask (022 here)."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    if shared:
        subprocess.run(["git", "-C", str(tmp_path), "config", "core.sharedRepository", shared])
    out = subprocess.run(
        ["sh", "-c", f"umask 022; {SHARED_UMASK}; umask"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == umask
