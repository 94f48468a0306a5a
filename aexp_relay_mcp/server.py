"""MCP adapter: the seven ``airgapped_*`` tools over stdio, built on ``RelayClient``.

The tool table, input models, descriptions and annotations derive from the op
registry (``ops.OPS``). Nothing here writes to stdout: it belongs to JSON-RPC.

Results are ``CallToolResult``s that we build ourselves, so that:

* a success carries ``structuredContent`` (validated against the tool's
  ``outputSchema``) plus the same JSON as text;
* a failure is ``isError`` with one JSON object as its text: ``kind``,
  ``message``, ``hint`` naming the next tool, and ``exit_code``/``stderr_tail``
  when a command ran. Arguments that fail validation get the same shape
  (``kind: invalid_request``) from the ``strict_arguments`` middleware.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context, Elicit, ElicitationResult, MCPServer, Resolve
from mcp.server.mcpserver.tools.base import Tool
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from . import __version__
from .client import RelayClient
from .config import RelayConfig
from .errors import RelayError, RelayValidationError
from .ops import OPS, OpSpec, describe_validation_error
from .parsing import human_size
from .results import ConnectionStatus, WandbPreview

SERVER_NAME = "aexp"
TOOL_PREFIX = "airgapped_"
HEARTBEAT_S = 2.0
PROGRESS_TICK_S = 0.5

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
Errors are JSON with kind, message and hint; the hint names the next tool to call.
Nothing outside these tools can run on the host."""


def tool_name(op: str) -> str:
    return f"{TOOL_PREFIX}{op}"


# --------------------------------------------------------------------------- tool table


@dataclass(frozen=True)
class ToolSpec:
    name: str
    op: str | None  # None: the connection check
    title: str
    description: str
    annotations: ToolAnnotations
    output_model: type[BaseModel]
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)


COMMON_FIELDS: dict[str, tuple[Any, Any]] = {
    "ssh_host": (
        str | None,
        Field(
            default=None,
            description="ssh host: an alias from ~/.ssh/config or user@host. "
            "Default: the configured AEXP_RELAY_SSH_HOST.",
        ),
    ),
    "remote_repo": (
        str | None,
        Field(
            default=None,
            description="Path of the git checkout on the host, absolute or starting with ~/. "
            "Default: the configured AEXP_RELAY_REMOTE_REPO.",
        ),
    ),
    "timeout": (
        float | None,
        Field(
            default=None,
            description="Seconds before the call is stopped, locally and on the host. "
            "Default: 60 (wandb_sync 600), or AEXP_RELAY_TIMEOUT.",
        ),
    ),
}

APPROVE_FIELD: tuple[Any, Any] = (
    bool,
    Field(
        default=False,
        description="true only after the user saw the preview and agreed to upload. "
        "Without it nothing is uploaded and a consent_required error carries the preview.",
    ),
)

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


def _op_fields(spec: OpSpec) -> dict[str, tuple[Any, Any]]:
    fields = {}
    for name, info in spec.args_model.model_fields.items():
        fields[name] = (
            info.annotation,
            Field(default=info.default, description=info.description),
        )
    if spec.consent:
        fields["approve"] = APPROVE_FIELD
    return fields


def _annotations(op: str) -> ToolAnnotations:
    read_only, destructive, idempotent, open_world = _HINTS[op]
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
            op=None,
            title="Check the SSH connection",
            description="Check that the host is reachable over ssh and the repo is a git "
            "checkout; reports round-trip time, branch, git version and whether wandb is "
            "available. An unreachable host is a normal answer (reachable=false) with a hint.",
            annotations=ToolAnnotations(
                read_only_hint=True,
                destructive_hint=False,
                idempotent_hint=True,
                open_world_hint=False,
            ),
            output_model=ConnectionStatus,
            fields=dict(COMMON_FIELDS),
        )
    ]
    for spec in OPS.values():
        specs.append(
            ToolSpec(
                name=tool_name(spec.name),
                op=spec.name,
                title=spec.name.replace("_", " ").capitalize(),
                description=f"{spec.summary} {_EXTRA_DESCRIPTION[spec.name]}",
                annotations=_annotations(spec.name),
                output_model=spec.result_model,
                fields={**COMMON_FIELDS, **_op_fields(spec)},
            )
        )
    return specs


def input_model(spec: ToolSpec) -> type[BaseModel]:
    """The strict model a call's raw arguments must satisfy: unknown keys refused,
    no coercion (``approve: "yes"`` is not ``true``)."""
    return create_model(  # type: ignore[call-overload, no-any-return]
        f"{spec.name}_input",
        __config__=ConfigDict(extra="forbid", strict=True),
        **spec.fields,
    )


# --------------------------------------------------------------------------- results


def _json_result(data: dict[str, Any], *, error: bool) -> CallToolResult:
    text = json.dumps(data, ensure_ascii=False, default=str)
    if error:
        return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)


def error_result(exc: RelayError) -> CallToolResult:
    return _json_result(exc.to_dict(tool_name), error=True)


def ok_result(model: BaseModel) -> CallToolResult:
    return _json_result(model.model_dump(mode="json"), error=False)


def invalid_arguments_result(tool: str, exc: ValidationError, model: type[BaseModel]) -> RelayError:
    allowed = ", ".join(model.model_fields)
    return RelayValidationError(
        f"Invalid arguments for {tool}: {describe_validation_error(exc)}.",
        hint=f"{tool} accepts: {allowed}. Types are strict: booleans are true/false, "
        "numbers are numbers, lists are JSON arrays.",
    )


# --------------------------------------------------------------------------- consent


class ApproveUpload(BaseModel):
    """What the human is asked in elicit mode."""

    approve: bool = Field(description="Upload these runs to Weights & Biases now?")


@dataclass(frozen=True)
class ConsentState:
    """A resolver's plain answer when it does not ask the human."""

    state: str  # agent_mode | not_requested | cannot_elicit | nothing_to_upload | error
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


# --------------------------------------------------------------------------- server


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


def build_server(client: RelayClient, config: RelayConfig) -> MCPServer:
    specs = build_tool_specs()
    models = {spec.name: input_model(spec) for spec in specs}

    async def strict_arguments(ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        """Validate tools/call arguments against the strict models before the SDK does."""
        params = ctx.params if isinstance(ctx.params, dict) else None
        if ctx.method == "tools/call" and params is not None:
            name = params.get("name")
            model = models.get(name) if isinstance(name, str) else None
            arguments = params.get("arguments") or {}
            if model is not None:
                try:
                    model.model_validate(arguments)
                except ValidationError as exc:
                    error = invalid_arguments_result(name, exc, model)  # type: ignore[arg-type]
                    client.audit.record(
                        op=name, args=arguments, outcome="rejected", kind=error.kind
                    )
                    return error_result(error)
        return await call_next(ctx)

    tools = [_make_tool(spec, models[spec.name], client, config) for spec in specs]
    server = MCPServer(
        name=SERVER_NAME,
        version=__version__,
        instructions=INSTRUCTIONS,
        tools=tools,
        middleware=[strict_arguments],
    )
    return server


def _make_tool(
    spec: ToolSpec, model: type[BaseModel], client: RelayClient, config: RelayConfig
) -> Tool:
    async def handler(ctx: Context, **kwargs: Any) -> CallToolResult:
        try:
            return await _call(spec, client, config, ctx, kwargs)
        except RelayError as exc:
            return error_result(exc)
        except Exception as exc:  # never a traceback to the client
            log.exception("%s failed unexpectedly", spec.name)
            return _json_result(
                {
                    "kind": "internal_error",
                    "message": f"Unexpected {type(exc).__name__} in the relay: {exc}",
                    "hint": "This is a bug in aexp-relay-mcp; the server log on stderr has "
                    "details. airgapped_repo_status shows the repo's state.",
                },
                error=True,
            )

    params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context)]
    annotations: dict[str, Any] = {"ctx": Context}
    for name, (annotation, info) in spec.fields.items():
        annotated = Annotated[annotation, Field(description=info.description)]  # type: ignore[valid-type]
        params.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=info.default, annotation=annotated
            )
        )
        annotations[name] = annotated
    if spec.op is not None and OPS[spec.op].consent:
        preview_uploads, ask_consent = _consent_resolvers(client, config)
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

    tool = Tool.from_function(
        handler,
        name=spec.name,
        title=spec.title,
        description=spec.description,
        annotations=spec.annotations,
    )
    tool.parameters = model.model_json_schema()
    return tool


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


async def _call(
    spec: ToolSpec, client: RelayClient, config: RelayConfig, ctx: Context, kwargs: dict[str, Any]
) -> CallToolResult:
    host = kwargs.pop("ssh_host", None)
    repo = kwargs.pop("remote_repo", None)
    timeout = kwargs.pop("timeout", None)
    if spec.op is None:
        status = await client.check_connection(host, repo, timeout=timeout)
        return ok_result(status)
    approve = False
    if OPS[spec.op].consent:
        approve, pinned_runs = _apply_consent(
            config,
            bool(kwargs.pop("approve", False)),
            kwargs.pop("consent", None),
            kwargs.pop("uploads", None),
        )
        if pinned_runs is not None:
            kwargs["runs"] = pinned_runs
    args = {k: v for k, v in kwargs.items() if v is not None}

    async def work(on_progress: Callable[[float, str], None]) -> Any:
        return await client.request(
            spec.op,  # type: ignore[arg-type]
            args,
            ssh_host=host,
            remote_repo=repo,
            approve=approve,
            timeout=timeout,
            on_progress=on_progress,
        )

    if _wants_progress(ctx):
        return ok_result(await _with_progress(ctx, spec.op, work))
    return ok_result(await work(lambda percent, message: None))


def _wants_progress(ctx: Context) -> bool:
    """Whether the client sent a progress token (no ticker task otherwise)."""
    meta = getattr(ctx.request_context, "meta", None)
    if not isinstance(meta, dict):
        return False
    return meta.get("progress_token", meta.get("progressToken")) is not None


def _apply_consent(
    config: RelayConfig, approve: bool, consent: Any, uploads: Any
) -> tuple[bool, list[str] | None]:
    """Decide whether the upload is approved, and which runs: in elicit mode only the human
    can say yes, and only to the runs the question showed."""
    if config.consent != "elicit":
        return approve, None
    data = getattr(consent, "data", None)
    action = getattr(consent, "action", None)
    if isinstance(data, ConsentState):
        if data.state == "cannot_elicit":
            raise RelayValidationError(
                "AEXP_RELAY_CONSENT=elicit requires the user's confirmation through MCP "
                "elicitation, and this client does not support elicitation. Nothing was uploaded.",
                kind="consent_required",
                hint="Ask the user to run `aexp-relay-mcp wandb-sync --approve` in a terminal, "
                "or use a client that supports elicitation.",
            )
        if data.state == "error" and data.error is not None:
            raise data.error
        return False, None  # not requested: the op returns the preview
    shown = uploads.preview if isinstance(uploads, ConsentState) else None
    if isinstance(data, ApproveUpload) and action == "accept" and data.approve and shown:
        return True, [run.name for run in shown.runs]
    raise RelayValidationError(
        "The user did not approve the upload. Nothing was uploaded.",
        kind="consent_declined",
        hint="Do not retry unless the user asks for it.",
    )


# --------------------------------------------------------------------------- entry point


def serve(config: RelayConfig | None = None) -> int:
    """Run the stdio server until stdin closes or a signal arrives; leave no child behind."""
    cfg = config or RelayConfig.from_env()
    logging.basicConfig(
        stream=sys.stderr,
        level=cfg.log_level,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    client = RelayClient(config=cfg, op_namer=lambda op: f"`{tool_name(op)}`")
    server = build_server(client, cfg)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        client.emergency_stop(wait_s=3.0)
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        server.run("stdio")
    finally:
        client.emergency_stop(wait_s=3.0)
    return 0
