"""The MCP server: the seven ``airgapped_*`` tools over stdio, built on ``RelayClient``.

Each tool is a plain function below, named as the agent sees it (``tools`` holds their
names, schemas and annotations). Nothing here writes to stdout: it belongs to JSON-RPC.
Arguments that fail validation get the error shape of every failure (``kind:
invalid_request``) from the ``strict_arguments`` middleware.

Shutdown: SIGINT, SIGTERM, SIGHUP and stdin EOF all end every live call the same way
(``LiveCalls.interrupt_all``: local side closed, remote kill dispatched, audit line
``interrupted``), then the process exits: 0 for EOF, 128+signal otherwise. A second
signal during shutdown changes nothing.
"""

from __future__ import annotations

import fcntl
import inspect
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context, ElicitationResult, MCPServer, Resolve
from mcp.server.mcpserver.tools.base import Tool
from mcp.types import CallToolResult
from pydantic import Field, ValidationError

from ...model.config import RelayConfig
from ...model.errors import ConsentError, RelayError
from ...model.results import OpResult
from ...model.version import __version__
from ...relay.client import RelayClient
from ...remote.ops import OPS, invalid_arguments
from .consent import ApproveUpload, ConsentState, consent_resolvers, decide_consent
from .tools import (
    INSTRUCTIONS,
    MCP,
    SERVER_NAME,
    ToolSpec,
    build_tool_specs,
    error_result,
    json_result,
    ok_result,
)

HEARTBEAT_S = 2.0
PROGRESS_TICK_S = 0.5
# After the first signal: how long to let interrupted calls reap their local processes.
REAP_WAIT_S = 0.15

log = logging.getLogger("aexp_relay_mcp.server")


# --------------------------------------------------------------------------- the tools


@dataclass
class ToolCall:
    """One tools/call as a tool function sees it: validated arguments and the context."""

    ctx: Context
    op_args: dict[str, Any]
    ssh_host: str | None = None
    remote_repo: str | None = None
    timeout: float | None = None
    approve: bool = False
    answer: Any = None  # the elicitation's outcome (elicit mode)
    uploads: Any = None  # the preview the question showed (elicit mode)


class Tools:
    """What the tool functions share: the relay client, its config, progress reporting."""

    def __init__(self, client: RelayClient, config: RelayConfig) -> None:
        self.client, self.config = client, config

    async def run_op(self, op: str, call: ToolCall, *, approve: bool = False) -> CallToolResult:
        async def work(on_progress: Callable[[float, str], None]) -> OpResult:
            return await self.client.request(
                op,
                call.op_args,
                ssh_host=call.ssh_host,
                remote_repo=call.remote_repo,
                approve=approve,
                timeout=call.timeout,
                on_progress=on_progress,
            )

        if _wants_progress(call.ctx):
            return ok_result(await _with_progress(call.ctx, op, work))
        return ok_result(await work(lambda percent, message: None))


async def airgapped_status(tools: Tools, call: ToolCall) -> CallToolResult:
    """Reachability, repo, git, wandb, login shell. Unreachable is an answer, not an error."""
    status = await tools.client.check_connection(
        call.ssh_host, call.remote_repo, timeout=call.timeout
    )
    return ok_result(status)


async def airgapped_repo_status(tools: Tools, call: ToolCall) -> CallToolResult:
    return await tools.run_op("repo_status", call)


async def airgapped_fetch(tools: Tools, call: ToolCall) -> CallToolResult:
    return await tools.run_op("fetch", call)


async def airgapped_pull(tools: Tools, call: ToolCall) -> CallToolResult:
    return await tools.run_op("pull", call)


async def airgapped_rebase(tools: Tools, call: ToolCall) -> CallToolResult:
    return await tools.run_op("rebase", call)


async def airgapped_push(tools: Tools, call: ToolCall) -> CallToolResult:
    return await tools.run_op("push", call)


async def airgapped_wandb_sync(tools: Tools, call: ToolCall) -> CallToolResult:
    """Consent op: in elicit mode the human's answer decides, and pins the runs uploaded."""
    try:
        approve, pinned = decide_consent(tools.config, call.approve, call.answer, call.uploads)
    except ConsentError as exc:
        tools.client.record_refusal(
            "wandb_sync",
            {**call.op_args, "approve": call.approve},
            exc,
            ssh_host=call.ssh_host,
            remote_repo=call.remote_repo,
        )
        raise
    if pinned is not None:
        call.op_args.update(pinned)
    return await tools.run_op("wandb_sync", call, approve=approve)


TOOL_FUNCTIONS: dict[str, Callable[[Tools, ToolCall], Awaitable[CallToolResult]]] = {
    f.__name__: f
    for f in (
        airgapped_status,
        airgapped_repo_status,
        airgapped_fetch,
        airgapped_pull,
        airgapped_rebase,
        airgapped_push,
        airgapped_wandb_sync,
    )
}


# --------------------------------------------------------------------------- wiring


@dataclass
class _Progress:
    """Latest git progress, and what we last sent (values must only increase)."""

    percent: float | None = None
    message: str = ""
    fresh: bool = False
    sent: float = 0.0


async def _with_progress(
    ctx: Context, op: str, work: Callable[[Callable[[float, str], None]], Awaitable[Any]]
) -> Any:
    """Run work, sending git's percentages and a heartbeat every few seconds."""
    state = _Progress()
    started = time.monotonic()

    def on_progress(percent: float, message: str) -> None:
        state.percent, state.message, state.fresh = percent, message, True

    async def ticker() -> None:
        last_sent_at = started
        while True:
            await anyio.sleep(PROGRESS_TICK_S)
            now = time.monotonic()
            if not state.fresh and now - last_sent_at < HEARTBEAT_S:
                continue
            value = (
                max(state.sent + 0.01, state.percent or 0.0) if state.fresh else state.sent + 0.01
            )
            value = min(value, 99.99)
            message = f"{op}: {state.message or 'running'}, {now - started:.0f}s"
            state.sent, state.fresh, last_sent_at = value, False, now
            await ctx.report_progress(value, 100, message=message)

    result: Any = None
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        try:
            result = await work(on_progress)
        except Exception as exc:  # re-raised below, outside the task group's wrapping
            failure = exc
        finally:
            tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return result


def _wants_progress(ctx: Context) -> bool:
    """Whether the client sent a progress token (no ticker task otherwise)."""
    meta = getattr(ctx.request_context, "meta", None)
    if not isinstance(meta, dict):
        return False
    return meta.get("progress_token", meta.get("progressToken")) is not None


def build_server(client: RelayClient, config: RelayConfig) -> MCPServer:
    specs = build_tool_specs()
    by_name = {spec.name: spec for spec in specs}
    tools = Tools(client, config)

    async def strict_arguments(ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        """Validate tools/call arguments against the strict models before the SDK does."""
        params = ctx.params if isinstance(ctx.params, dict) else None
        if ctx.method == "tools/call" and params is not None:
            name = params.get("name")
            spec = by_name.get(name) if isinstance(name, str) else None
            arguments = params.get("arguments") or {}
            if spec is not None:
                try:
                    spec.input.model_validate(arguments)
                except ValidationError as exc:
                    error = invalid_arguments(spec.op, exc)
                    shown = arguments if isinstance(arguments, dict) else {"arguments": arguments}
                    client.record_refusal(spec.op, shown, error)
                    return error_result(error)
        return await call_next(ctx)

    return MCPServer(
        name=SERVER_NAME,
        version=__version__,
        instructions=INSTRUCTIONS,
        tools=[_make_tool(spec, tools) for spec in specs],
        middleware=[strict_arguments],
    )


def _make_tool(spec: ToolSpec, tools: Tools) -> Tool:
    """Wire a tool function to the SDK: a handler whose signature is the input model's
    fields (the SDK reads it), plus the consent resolvers for a consent op."""
    function = TOOL_FUNCTIONS[spec.name]

    async def handler(ctx: Context, **kwargs: Any) -> CallToolResult:
        call = ToolCall(
            ctx=ctx,
            op_args={},
            ssh_host=kwargs.pop("ssh_host", None),
            remote_repo=kwargs.pop("remote_repo", None),
            timeout=kwargs.pop("timeout", None),
            approve=bool(kwargs.pop("approve", False)),
            answer=kwargs.pop("consent", None),
            uploads=kwargs.pop("uploads", None),
        )
        call.op_args = {k: v for k, v in kwargs.items() if v is not None}
        try:
            return await function(tools, call)
        except RelayError as exc:
            exc.op = exc.op or spec.op
            return error_result(exc)
        except Exception as exc:  # never a traceback to the client
            log.exception("%s failed unexpectedly", spec.name)
            return json_result(
                {
                    "kind": "internal_error",
                    "tool": spec.name,
                    "message": f"Unexpected {type(exc).__name__} in the relay: {exc}",
                    "hint": "This is a bug in aexp-relay-mcp; the server log on stderr has "
                    "details. airgapped_repo_status shows the repo's state.",
                },
                error=True,
            )

    params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context)]
    annotations: dict[str, Any] = {"ctx": Context}
    for name, info in spec.input.model_fields.items():
        annotated = Annotated[info.annotation, Field(description=info.description)]  # type: ignore[name-defined]
        params.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=info.default, annotation=annotated
            )
        )
        annotations[name] = annotated
    if spec.op in OPS and OPS[spec.op].consent:
        preview_uploads, ask_consent = consent_resolvers(tools.client, tools.config)
        resolved = {
            "uploads": Annotated[ConsentState, Resolve(preview_uploads)],
            "consent": Annotated[ElicitationResult[ApproveUpload], Resolve(ask_consent)],
        }
        for name, annotation in resolved.items():
            params.append(
                inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation)
            )
            annotations[name] = annotation
    returns = Annotated[CallToolResult, spec.output_model]
    handler.__signature__ = inspect.Signature(params, return_annotation=returns)  # type: ignore[attr-defined]
    annotations["return"] = returns
    handler.__annotations__ = annotations
    handler.__name__ = spec.name
    handler.__doc__ = function.__doc__

    tool = Tool.from_function(
        handler,
        name=spec.name,
        title=spec.title,
        description=spec.description,
        annotations=spec.annotations,
    )
    tool.parameters = spec.input.model_json_schema()
    return tool


# --------------------------------------------------------------------------- entry point


class StdinWatch:
    """Whether our client has closed stdin. On EOF the SDK cancels in-flight calls; this
    is how such a cancel is told from a client's own cancel (notifications/cancelled).

    A duplicate of fd 0, taken before the SDK moves the wire off fd 0, polled with a zero
    timeout for a hang-up: it never reads, so the SDK's reader sees every byte.
    """

    def __init__(self) -> None:
        try:
            self.fd: int | None = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
        except OSError:
            self.fd = None

    def hung_up(self) -> bool:
        if self.fd is None:
            return False
        poller = select.poll()
        poller.register(self.fd, select.POLLHUP | getattr(select, "POLLRDHUP", 0))
        return any(events & ~select.POLLIN for _, events in poller.poll(0))


async def end_live_calls(client: RelayClient) -> None:
    """Every way the server stops ends its calls this way: audit ``interrupted``, local side
    closed, remote kill dispatched; then their local processes are reaped (briefly)."""
    interrupted = client.calls.interrupt_all()
    if interrupted:
        log.warning("shutting down: %d call(s) interrupted", len(interrupted))
    deadline = time.monotonic() + REAP_WAIT_S
    while not all(c.reaped for c in interrupted) and time.monotonic() < deadline:
        await anyio.sleep(0.005)


def exit_now(code: int) -> None:
    """Exit without waiting on stdin (an SDK thread may still be reading it)."""
    sys.stderr.flush()
    os._exit(code)


async def _serve(server: MCPServer, client: RelayClient) -> None:
    async def on_signals() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                await end_live_calls(client)
                exit_now(128 + int(signum))

    async with anyio.create_task_group() as tg:
        tg.start_soon(on_signals)
        await server.run_stdio_async()
        await end_live_calls(client)  # stdin closed
        tg.cancel_scope.cancel()


# What a person who typed `aexp-relay-mcp` in a terminal sees (on stderr: stdout is the
# protocol's). An MCP client starts the server with pipes, and never sees it.
ON_A_TERMINAL = (
    f"aexp-relay-mcp {__version__}: an MCP server on stdio, waiting for a client such as "
    "Claude Code (`claude mcp add aexp -- aexp-relay-mcp serve`). To try it yourself: "
    "`aexp-relay-mcp --selftest`, `aexp-relay-mcp status`, or `aexp-relay-mcp --help`. "
    "Ctrl-C stops it."
)


def serve(config: RelayConfig | None = None) -> int:
    """Run the stdio server until stdin closes or a signal arrives; leave no child behind."""
    if sys.stdin is not None and sys.stdin.isatty():
        print(ON_A_TERMINAL, file=sys.stderr, flush=True)
    cfg = config or RelayConfig.from_env()
    logging.basicConfig(
        stream=sys.stderr,
        level=cfg.log_level,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    client = RelayClient(config=cfg, surface=MCP)
    client.shutting_down = StdinWatch().hung_up
    server = build_server(client, cfg)
    anyio.run(_serve, server, client)
    exit_now(0)
    return 0
