"""CLI adapter: ``aexp-relay-mcp <verb>``; with no verb it serves MCP over stdio.

Start-up cost, not layering, is why some imports sit inside functions here: only
argparse and the error tree load at start, so ``aexp-relay-mcp status --help`` is quick;
the relay (pydantic), the ``mcp`` SDK and the selftest load in the branch that needs
them. Exit codes: see ``surface``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...model.config import RelayConfig
from ...model.errors import RelayError
from ...model.targets import validate_host, validate_repo
from ...model.version import __version__
from .audit_command import run_audit
from .init_command import (
    InitError,
    next_steps,
    ssh_config_block,
    ssh_settings,
    update_mcp_config,
)
from .surface import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    OP_VERBS,
    cli_surface,
    exit_code_for,
    status_exit_code,
)

if TYPE_CHECKING:
    from ...relay.client import RelayClient


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", help="ssh host or alias (default: $AEXP_RELAY_SSH_HOST)")
    common.add_argument("--repo", help="repo path on the host (default: $AEXP_RELAY_REMOTE_REPO)")
    common.add_argument("--timeout", type=float, help="seconds before the call is stopped")
    common.add_argument("--json", action="store_true", help="print the structured result as JSON")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aexp-relay-mcp",
        description="Run whitelisted git and wandb ops on an HPC login node over ssh. "
        "With no command, serves MCP over stdio.",
        epilog="exit codes: 0 ok, 1 remote command failed, 2 usage/validation, "
        "3 host unreachable, 4 timeout, 5 consent required, 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"aexp-relay-mcp {__version__}")
    parser.add_argument(
        "--selftest",
        action="store_true",
        help="build a private sandbox, drive every MCP tool through a real stdio client, "
        "print a table; exit 0 only if all passed",
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="with --selftest: only the read-only tools, against the configured real host",
    )
    parser.add_argument(
        "--realistic",
        action="store_true",
        help="with --selftest: also sweep every tool against a noisy, slow login shell, "
        "through a bastion, with three servers sharing one login",
    )
    sub = parser.add_subparsers(dest="verb", metavar="<command>")
    common = _common()
    sub.add_parser("serve", help="serve MCP over stdio (the default)")
    sub.add_parser("status", parents=[common], help="check the ssh connection and the repo")
    for verb, (_, text) in OP_VERBS.items():
        p = sub.add_parser(verb, parents=[common], help=text, description=text)
        if verb in ("fetch", "push"):
            p.add_argument("--remote", help="a configured remote (default: origin; fetch: all)")
        if verb == "push":
            p.add_argument("--branch", help="local branch to push (default: the current one)")
        if verb == "wandb-sync":
            p.add_argument(
                "--run", action="append", dest="runs", metavar="NAME",
                help="an offline-run-* directory under wandb/ (repeatable; default: all unsynced)",
            )  # fmt: skip
            p.add_argument("--match", metavar="GLOB", help="only runs whose name matches")
            p.add_argument("--after-run", dest="after_run", metavar="NAME",
                           help="only runs named after this one (pages on)")  # fmt: skip
            p.add_argument("--to-run", dest="to_run", metavar="NAME",
                           help="only runs named up to this one")  # fmt: skip
            p.add_argument("--limit", type=int, metavar="N", help="at most N runs, by name")
            p.add_argument("--approve", action="store_true", help="upload (without it: preview)")
    init = sub.add_parser("init", help="register the server in .mcp.json; print the ssh set-up")
    init.add_argument("--host", required=True, help="ssh host or alias of the login node")
    init.add_argument("--repo", required=True, help="repo path on the host (absolute or ~/...)")
    init.add_argument("--mcp-config", default=".mcp.json", help="file to create or merge")
    init.add_argument("--force", action="store_true", help="replace conflicting values")
    init.add_argument("--check", action="store_true", help="also run the connection check")
    for verb, text in (
        ("connect", "open the shared ssh connection interactively (password, MFA, Duo)"),
        ("disconnect", "close the shared ssh connection"),
    ):
        p = sub.add_parser(verb, help=text, description=text)
        p.add_argument("host", nargs="?", help="default: $AEXP_RELAY_SSH_HOST")
    audit = sub.add_parser(
        "audit",
        help="what the agent did: recent calls from the audit log, with how each ended",
        description="Recent calls from the audit log, each with its final outcome; calls "
        "whose server died mid-call are marked NEVER ENDED.",
    )
    audit.add_argument(
        "--since",
        default="24h",
        metavar="DURATION",
        help="how far back: 30m, 2h, 1d, 1w (default 24h)",
    )
    audit.add_argument("--json", action="store_true", help="the paired calls as JSON")
    sandbox = sub.add_parser(
        "sandbox",
        help="run the built-in sandbox (private sshd, origin, clone, stub wandb) until Ctrl-C",
    )
    sandbox.add_argument(
        "--realistic",
        action="store_true",
        dest="sandbox_realistic",
        help="a noisy, slow login shell (banner on stdout, notices on stderr, 0.3 s start-up)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _dispatch(args: argparse.Namespace) -> int:
    if (args.live or args.realistic) and not args.selftest:
        print("aexp-relay-mcp: --live and --realistic only go with --selftest", file=sys.stderr)
        return EXIT_USAGE
    if args.selftest:
        from ..selftest.run import run_selftest

        return run_selftest(live=args.live, realistic=args.realistic)
    if args.verb in (None, "serve"):
        return _serve()
    if args.verb == "init":
        return _init(args)
    if args.verb in ("connect", "disconnect"):
        return _connect(args.verb, args.host)
    if args.verb == "sandbox":
        from .sandbox_command import run_sandbox

        return run_sandbox(realistic=args.sandbox_realistic)
    if args.verb == "audit":
        return run_audit(RelayConfig.from_env().audit_log, args.since, args.json)
    return _run_op(args)


def _serve() -> int:
    from ..mcp.server import serve

    try:
        return serve()
    except RelayError as exc:  # bad configuration in the environment
        print(f"aexp-relay-mcp: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _style(stream: Any) -> Any:
    from .render import Style

    return Style(stream.isatty() and not os.environ.get("NO_COLOR"))


def _client(
    config: RelayConfig | None = None, host: str | None = None, repo: str | None = None
) -> RelayClient:
    from ...relay.client import RelayClient

    return RelayClient(host, repo, config=config or RelayConfig.from_env(), surface=cli_surface())


def _report_error(exc: RelayError, as_json: bool) -> int:
    from .render import render_error

    if as_json:
        print(json.dumps(exc.to_dict(cli_surface()), ensure_ascii=False))
    else:
        print(render_error(exc, cli_surface(), _style(sys.stderr)), file=sys.stderr)
        preview = getattr(exc, "preview", None)
        if preview is not None:
            from .render import render_preview

            print(render_preview(preview, _style(sys.stdout)))
    return exit_code_for(exc)


def _run_op(args: argparse.Namespace) -> int:
    import asyncio

    from .render import render_result

    try:
        client = _client()
        if args.verb == "status":
            result: Any = asyncio.run(
                client.check_connection(args.host, args.repo, timeout=args.timeout)
            )
        else:
            op = OP_VERBS[args.verb][0]
            op_args: dict[str, Any] = {}
            for name in ("remote", "branch", "runs", "match", "after_run", "to_run", "limit"):
                value = getattr(args, name, None)
                if value is not None:
                    op_args[name] = value
            result = asyncio.run(
                client.request(
                    op,
                    op_args,
                    ssh_host=args.host,
                    remote_repo=args.repo,
                    approve=bool(getattr(args, "approve", False)),
                    timeout=args.timeout,
                    on_progress=_progress_line(sys.stderr) if op == "wandb_sync" else None,
                )
            )
    except RelayError as exc:
        return _report_error(exc, args.json)
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        print(render_result(result, _style(sys.stdout)))
    return status_exit_code(result) if args.verb == "status" else EXIT_OK


def _progress_line(stream: Any) -> Callable[[float, str], None]:
    """Progress as a line on stderr: rewritten in place on a terminal, one per step
    otherwise (a log keeps each)."""
    tty = stream.isatty()

    def show(percent: float, message: str) -> None:
        text = f"{percent:5.1f}%  {message}"
        stream.write(f"\r\033[K{text}" if tty else f"{text}\n")
        if tty and percent >= 100:
            stream.write("\n")
        stream.flush()

    return show


def _init(args: argparse.Namespace) -> int:
    try:
        config = RelayConfig.from_env()
        host, repo = validate_host(args.host), validate_repo(args.repo)
        settings = ssh_settings(host, config.ssh_bin, config.ssh_config)
        outcome = update_mcp_config(Path(args.mcp_config), host, repo, args.force)
    except RelayError as exc:
        return _report_error(exc, False)
    except InitError as exc:
        print(f"aexp-relay-mcp init: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not outcome.changed:
        print(f"{outcome.path}: mcpServers.aexp already has these values; nothing changed.")
    elif outcome.created:
        print(f"{outcome.path}: created with mcpServers.aexp.")
    else:
        print(f"{outcome.path}: updated mcpServers.aexp (previous file kept as {outcome.backup}).")
    print("\nAdd this to ~/.ssh/config (if the host has no block yet):\n")
    print(ssh_config_block(host, settings))
    print(next_steps(host, repo, outcome))
    if args.check:
        import asyncio

        from .render import render_status

        client = _client(config, host, repo)
        status = asyncio.run(client.check_connection())
        print("\n" + render_status(status, _style(sys.stdout)))
        return status_exit_code(status)
    return EXIT_OK


def _connect(verb: str, host_arg: str | None) -> int:
    from .connect_command import connect, disconnect

    return connect(host_arg) if verb == "connect" else disconnect(host_arg)
