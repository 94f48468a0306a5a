"""Consent for uploads in elicit mode (AEXP_RELAY_CONSENT=elicit): the human, not the
agent, says yes, through an MCP elicitation that shows exactly the runs to be uploaded.

Two resolvers run before the tool: the preview the human will see, and the question.
The tool gets both, so it uploads exactly the runs that were shown.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from mcp.server.mcpserver import Context, Elicit, Resolve
from pydantic import BaseModel, Field

from ...model.config import RelayConfig
from ...model.errors import ConsentError, RelayError
from ...model.results import WandbPreview
from ...model.text import human_size
from ...relay.client import RelayClient


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
    """The question the human sees: every run, and every command the upload will run."""
    lines = [
        f"Upload {preview.run_count} offline wandb run(s), {human_size(preview.total_bytes)}, "
        f"from {host}:{repo} to Weights & Biases, one `wandb sync` per run?"
    ]
    if preview.commands:
        lines += [
            f"  {command}   ({human_size(run.size_bytes)})"
            for command, run in zip(preview.commands, preview.runs, strict=True)
        ]
    else:
        lines.append(f"For each run below: {preview.command_template}")
        lines += [f"  - {r.name} ({human_size(r.size_bytes)})" for r in preview.runs]
    if preview.more_runs:
        lines.append(
            f"({preview.more_runs} more selected run(s) are not part of this upload: they are "
            "asked about on their own.)"
        )
    return "\n".join(lines)


ASK_THE_USER = (
    "Ask the user in the conversation whether to upload. If they agree, they can run "
    "`aexp-relay-mcp wandb-sync --approve` in a terminal"
)


def decide_consent(
    config: RelayConfig, approve: bool, answer: Any, uploads: Any
) -> tuple[bool, dict[str, Any] | None]:
    """Whether the upload is approved, and the arguments that pin it to the runs the
    question showed (the same selection, up to its last run). In elicit mode only the human
    can say yes; every other answer is its own ConsentError: declined (their decision),
    cancelled (nobody decided), unavailable (the client cannot ask)."""
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
        return True, {"to_run": shown.last_run}
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


def consent_resolvers(
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
        match: str | None = None,
        after_run: str | None = None,
        to_run: str | None = None,
        limit: int | None = None,
    ) -> ConsentState:
        if config.consent != "elicit":
            return ConsentState("agent_mode")
        if approve is not True:
            return ConsentState("not_requested")
        caps = ctx.client_capabilities
        if caps is None or caps.elicitation is None:
            return ConsentState("cannot_elicit")
        try:
            preview = await client.wandb_preview(
                runs,
                ssh_host=ssh_host,
                remote_repo=remote_repo,
                match=match,
                after_run=after_run,
                to_run=to_run,
                limit=limit,
            )
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
