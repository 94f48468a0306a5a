"""The seven tools as the agent sees them: names, descriptions, annotations, strict input
models and output models, generated from the op registry; and the ``CallToolResult``s
every tool answers with (success: ``structuredContent`` plus the same JSON as text;
failure: ``isError`` with one JSON object: ``kind``, ``tool``, ``message``, ``hint``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field, create_model

from ...model.errors import RelayError, Surface
from ...model.results import ConnectionStatus
from ...remote.ops import OPS

SERVER_NAME = "aexp"
TOOL_PREFIX = "airgapped_"

INSTRUCTIONS = """\
Run git and wandb operations in a checkout on an HPC login node, over SSH.
Start with airgapped_status (is the host reachable, is the repo there) and
airgapped_repo_status (branch, ahead/behind, changed files).
To get upstream changes: airgapped_fetch, then airgapped_pull (fast-forward only).
If pull says `diverged`, or push says `non_fast_forward`: airgapped_rebase, then airgapped_push.
airgapped_push never forces. airgapped_wandb_sync uploads offline runs to Weights & Biases:
it is a consent op. Call it without approve first, show the user the preview (runs, sizes,
and the commands it will run: one `wandb sync` per run), and pass approve=true only after
the user agreed: that uploads exactly the previewed runs.
A call cut by a dropped connection says so: read-only tools run again by themselves; the
others say what became of the checkout (`checkout`, `head`, `push_landed`, `left`).
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
        "Default: 60, or AEXP_RELAY_TIMEOUT; wandb_sync 600, or 120 + 60 per run for more.",
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
TOOL_HINTS: dict[str, tuple[bool, bool, bool, bool]] = {
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
    "wandb_sync": "Call without approve first to get the preview (kind 'consent_required'): "
    "the runs, and every command the upload runs, one `wandb sync` per run. Pass "
    "approve=true only after the user agreed; it uploads exactly the previewed runs.",
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
                annotations=_annotations(TOOL_HINTS[spec.name]),
                output_model=spec.result_model,
                input=input_model(spec.name),
            )
        )
    return specs


# --------------------------------------------------------------------------- results


def json_result(data: dict[str, Any], *, error: bool) -> CallToolResult:
    text = json.dumps(data, ensure_ascii=False, default=str)
    if error:
        return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)


def error_result(exc: RelayError) -> CallToolResult:
    return json_result(exc.to_dict(MCP), error=True)


def ok_result(model: BaseModel) -> CallToolResult:
    return json_result(model.model_dump(mode="json"), error=False)
