"""MCP adapter: the seven ``airgapped_*`` tools over stdio, built on ``RelayClient``.

Each tool is a plain function below, named as the agent sees it. Their input models
inherit the op's own argument model (its validators included), so the tool schema and
the op registry validate through one path. Nothing here writes to stdout: it belongs to
JSON-RPC.

Results are ``CallToolResult``s that we build ourselves, so that:

* a success carries ``structuredContent`` (validated against the tool's
  ``outputSchema``) plus the same JSON as text;
* a failure is ``isError`` with one JSON object as its text: ``kind``, ``tool``,
  ``message``, ``hint`` naming the next tool, and ``exit_code``/``stderr_tail`` when a
  command ran. Arguments that fail validation get the same shape (``kind:
  invalid_request``) from the ``strict_arguments`` middleware.

Shutdown: SIGINT, SIGTERM, SIGHUP and stdin EOF all end every live call the same way
(``LiveCalls.interrupt_all``: local side closed, remote kill dispatched, audit line
``interrupted``), then the process exits: 0 for EOF, 128+signal otherwise. A second
signal during shutdown changes nothing.
"""

from __future__ import annotations

import fcntl
import inspect
import json
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context, Elicit, ElicitationResult, MCPServer, Resolve
from mcp.server.mcpserver.tools.base import Tool
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from . import __version__
from .client import RelayClient
from .config import RelayConfig
from .errors import ConsentError, RelayError, Surface
from .ops import OPS, invalid_arguments
from .parsing import human_size
from .results import ConnectionStatus, OpResult, WandbPreview

SERVER_NAME = "aexp"
TOOL_PREFIX = "airgapped_"
HEARTBEAT_S = 2.0
PROGRESS_TICK_S = 0.5
# After the first signal: how long to let interrupted calls reap their local processes.
REAP_WAIT_S = 0.15

log = logging.getLogger("aexp_relay_mcp.server")

INSTRUCTIONS = """\
Run git and wandb operations in a checkout on an HPC login node, over SSH.
Start with airgapped_status (is the host reachable, is the repo there) and
airgapped_repo_status (branch, ahead/behind, changed files).
To get upstream changes: airgapped_fetch, then airgapped_pull (fast-forward only).
If pull says `diverged`, or push says `non_fast_forward`: airgapped_rebase, then airgapped_push.
airgapped_push never forces. airgapped_wandb_sync uploads offline runs to Weights & Biases:
it is a consent op. Call it without approve first, show the user the preview (runs, sizes,
command), and pass approve=true only after the user agreed.
Errors are JSON with kind, tool, message and hint; the hint names the next tool to call.
Nothing outside these tools can run on the host."""


def tool_name(op: str) -> str:
    return f"{TOOL_PREFIX}{op}"


MCP = Surface("mcp", "tool", tool_name, lambda arg: arg)


# --------------------------------------------------------------------------- inputs


class CommonArgs(BaseModel):
    """Arguments every tool takes."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    ssh_host: str | None = Field(
        default=None,
        description="ssh host: an alias from ~/.ssh/config or user@host. "
        "Default: the configured AEXP_RELAY_SSH_HOST.",
    )
    remote_repo: str | None = Field(
        default=None,
        description="Path of the git checkout on the host, absolute or starting with ~/. "
        "Default: the configured AEXP_RELAY_REMOTE_REPO.",
    )
    timeout: float | None = Field(
        default=None,
        description="Seconds before the call is stopped, locally and on the host. "
        "Default: 60 (wandb_sync 600), or AEXP_RELAY_TIMEOUT.",
    )


class ConsentArgs(BaseModel):
    """The approval a consent op needs."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    approve: bool = Field(
        default=False,
        description="true only after the user saw the preview and agreed to upload. "
        "Without it nothing is uploaded and a consent_required error carries the preview.",
    )


def input_model(op: str) -> type[BaseModel]:
    """The strict model a call's raw arguments must satisfy: the op's own argument model
    (with its validators) plus the common arguments. Unknown keys refused, no coercion
    (``approve: "yes"`` is not ``true``)."""
    spec = OPS.get(op)
    bases: tuple[type[BaseModel], ...] = (CommonArgs,)
    if spec is not None:
        bases = (spec.args_model, *bases, *((ConsentArgs,) if spec.consent else ()))
    model: type[BaseModel] = create_model(f"{tool_name(op)}_input", __base__=bases)
    return model


# --------------------------------------------------------------------------- tool table


@dataclass(frozen=True)
class ToolSpec:
    name: str
    op: str  # "status" for the connection check, else an op in the registry
    title: str
    description: str
    annotations: ToolAnnotations
    output_model: type[BaseModel]
    input: type[BaseModel] = field(repr=False, default=CommonArgs)


# (readOnly, destructive, idempotent, openWorld) per op, set honestly.
_HINTS: dict[str, tuple[bool, bool, bool, bool]] = {
    "repo_status": (True, False, True, False),
    "fetch": (False, False, True, True),
    "pull": (False, False, False, True),
    "rebase": (False, True, False, True),
    "push": (False, False, False, True),
    "wandb_sync": (False, False, False, True),
}

_EXTRA_DESCRIPTION: dict[str, str] = {
    "repo_status": "Use it first, and after every other tool to see where things stand.",
    "fetch": "Safe to repeat; changes only remote-tracking refs, never your branch.",
    "pull": "On kind 'diverged' call airgapped_rebase instead.",
    "rebase": "It rewrites local, unpushed commits; a conflict returns kind 'conflict' with "
    "conflicted_files. After a success, call airgapped_push.",
    "push": "On kind 'non_fast_forward' call airgapped_rebase, then airgapped_push again.",
    "wandb_sync": "Call without approve first to get the preview (kind 'consent_required'); "
    "pass approve=true only after the user agreed.",
}

STATUS_DESCRIPTION = (
    "Check that the host is reachable over ssh and the repo is a git checkout; reports "
    "round-trip time, branch, git version, whether wandb is available, and whether the "
    "login shell prints text or is slow (with what to change). An unreachable host is a "
    "normal answer (reachable=false) with a hint."
)


def _annotations(hints: tuple[bool, bool, bool, bool]) -> ToolAnnotations:
    read_only, destructive, idempotent, open_world = hints
    return ToolAnnotations(
        read_only_hint=read_only,
        destructive_hint=destructive,
        idempotent_hint=idempotent,
        open_world_hint=open_world,
    )


def build_tool_specs() -> list[ToolSpec]:
    specs = [
        ToolSpec(
            name=tool_name("status"),
            op="status",
            title="Check the SSH connection",
            description=STATUS_DESCRIPTION,
            annotations=_annotations((True, False, True, False)),
            output_model=ConnectionStatus,
            input=input_model("status"),
        )
    ]
    for spec in OPS.values():
        specs.append(
            ToolSpec(
                name=tool_name(spec.name),
                op=spec.name,
                title=spec.name.replace("_", " ").capitalize(),
                description=f"{spec.summary} {_EXTRA_DESCRIPTION[spec.name]}",
                annotations=_annotations(_HINTS[spec.name]),
                output_model=spec.result_model,
                input=input_model(spec.name),
            )
        )
    return specs


# --------------------------------------------------------------------------- results


def _json_result(data: dict[str, Any], *, error: bool) -> CallToolResult:
    text = json.dumps(data, ensure_ascii=False, default=str)
    if error:
        return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)


def error_result(exc: RelayError) -> CallToolResult:
    return _json_result(exc.to_dict(MCP), error=True)


def ok_result(model: BaseModel) -> CallToolResult:
    return _json_result(model.model_dump(mode="json"), error=False)


# --------------------------------------------------------------------------- consent


class ApproveUpload(BaseModel):
    """What the human is asked in elicit mode."""

    approve: bool = Field(description="Upload these runs to Weights & Biases now?")


@dataclass(frozen=True)
class ConsentState:
    """A resolver's plain answer when it does not ask the human."""

    state: str  # agent_mode | not_requested | cannot_elicit | nothing_to_upload | error | ask
    preview: WandbPreview | None = None
    error: RelayError | None = None


def describe_preview(preview: WandbPreview, host: str, repo: str) -> str:
    lines = [
        f"Upload {len(preview.runs)} offline wandb run(s), {human_size(preview.total_bytes)}, "
        f"from {host}:{repo} to Weights & Biases?"
    ]
    lines += [f"  - {r.name} ({human_size(r.size_bytes)})" for r in preview.runs]
    lines.append(f"Command: {preview.command}")
    return "\n".join(lines)


ASK_THE_USER = (
    "Ask the user in the conversation whether to upload. If they agree, they can run "
    "`aexp-relay-mcp wandb-sync --approve` in a terminal"
)


def decide_consent(
    config: RelayConfig, approve: bool, answer: Any, uploads: Any
) -> tuple[bool, list[str] | None]:
    """Whether the upload is approved, and which runs. In elicit mode only the human can
    say yes, and only to the runs the question showed; every other answer is its own
    ConsentError: declined (their decision), cancelled (nobody decided), unavailable (the
    client cannot ask)."""
    if config.consent != "elicit":
        return approve, None
    # A resolver that did not ask returns its ConsentState; the SDK hands it back as data.
    if isinstance(getattr(answer, "data", None), ConsentState):
        answer = answer.data
    if isinstance(answer, ConsentState):
        if answer.state == "cannot_elicit":
            raise ConsentError(
                "AEXP_RELAY_CONSENT=elicit needs the user's confirmation through MCP "
                "elicitation, and this client cannot show such a question. Nothing was "
                "uploaded.",
                kind="consent_unavailable",
                hint=f"approve=true from the agent is not enough in this mode. {ASK_THE_USER}, "
                "or set AEXP_RELAY_CONSENT=agent so that {set:approve} from the agent is enough.",
            )
        if answer.state == "error" and answer.error is not None:
            raise answer.error
        return False, None  # not requested, or nothing to upload: the op says which
    shown = uploads.preview if isinstance(uploads, ConsentState) else None
    action = getattr(answer, "action", None)
    data = getattr(answer, "data", None)
    if action == "accept" and isinstance(data, ApproveUpload) and data.approve and shown:
        return True, [run.name for run in shown.runs]
    if action == "cancel":
        raise ConsentError(
            "The question was dismissed, or nobody could answer it (a non-interactive client "
            "answers cancel). The user did not decide. Nothing was uploaded.",
            kind="consent_cancelled",
            preview=shown,
            hint=f"{ASK_THE_USER}, or call {{op:wandb_sync}} with {{set:approve}} again while "
            "they can answer the question.",
        )
    raise ConsentError(
        "The user declined the upload. Nothing was uploaded.",
        kind="consent_declined",
        preview=shown,
        hint="Do not retry unless the user asks for it.",
    )


def _consent_resolvers(
    client: RelayClient, config: RelayConfig
) -> tuple[Callable[..., Awaitable[Any]], Callable[..., Awaitable[Any]]]:
    """Two resolvers: the preview the human will see, and the question itself. The tool
    gets both, so it uploads exactly the runs that were shown."""

    async def preview_uploads(
        ctx: Context,
        approve: bool,
        runs: list[str] | None,
        ssh_host: str | None,
        remote_repo: str | None,
    ) -> ConsentState:
        if config.consent != "elicit":
            return ConsentState("agent_mode")
        if approve is not True:
            return ConsentState("not_requested")
        caps = ctx.client_capabilities
        if caps is None or caps.elicitation is None:
            return ConsentState("cannot_elicit")
        try:
            preview = await client.wandb_preview(runs, ssh_host=ssh_host, remote_repo=remote_repo)
        except RelayError as exc:
            return ConsentState("error", error=exc)
        return ConsentState("ask" if preview.runs else "nothing_to_upload", preview=preview)

    async def ask_consent(
        state: Annotated[ConsentState, Resolve(preview_uploads)],
        ssh_host: str | None,
        remote_repo: str | None,
    ) -> Elicit[ApproveUpload] | ConsentState:
        if state.state != "ask" or state.preview is None:
            return state
        host = ssh_host or config.ssh_host or ""
        repo = remote_repo or config.remote_repo or ""
        return Elicit(describe_preview(state.preview, host, repo), ApproveUpload)

    # The annotation names a local function, which string annotations cannot resolve.
    ask_consent.__annotations__["state"] = Annotated[ConsentState, Resolve(preview_uploads)]
    return preview_uploads, ask_consent


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
        approve, runs = decide_consent(tools.config, call.approve, call.answer, call.uploads)
    except ConsentError as exc:
        tools.client.record_refusal(
            "wandb_sync",
            {**call.op_args, "approve": call.approve},
            exc,
            ssh_host=call.ssh_host,
            remote_repo=call.remote_repo,
        )
        raise
    if runs is not None:
        call.op_args["runs"] = runs
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
            return _json_result(
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
        preview_uploads, ask_consent = _consent_resolvers(tools.client, tools.config)
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


def serve(config: RelayConfig | None = None) -> int:
    """Run the stdio server until stdin closes or a signal arrives; leave no child behind."""
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
