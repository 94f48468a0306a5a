"""The consent op: upload offline wandb runs only with the user's yes.

Every call lists the runs first (the preview). Without approval the preview is the
answer (``consent_required``) and nothing is uploaded; with it, exactly the previewed
runs are uploaded, with the command the preview showed.
"""

from __future__ import annotations

from typing import Any

from ..model.errors import ConsentRequiredError, RemoteCommandError
from ..model.results import OpResult, WandbPreview, WandbSyncResult
from ..model.text import human_size
from ..remote.failures import guard_failure
from ..remote.ops import (
    BuildContext,
    OpSpec,
    WandbSyncArgs,
    build_wandb_preview,
    display_wandb_command,
    parse_wandb_preview,
    validate_request,
)
from ..remote.output import UnparseableOutput
from .call import Call
from .call_runner import CallRunner, ProgressFn
from .diagnose import unparseable

PREVIEW_TIMEOUT_S = 30.0


async def wandb_preview(
    runner: CallRunner,
    runs: list[str] | None,
    *,
    ssh_host: str | None = None,
    remote_repo: str | None = None,
) -> WandbPreview:
    """The preview on its own (audited as op ``wandb_preview``): what would be uploaded."""
    args = {"runs": runs} if runs is not None else None
    call = runner.new_call("wandb_preview", args, ssh_host, remote_repo)
    with runner.ending(call):
        _, parsed = validate_request("wandb_sync", args)
        runner.target(call)
        call.set_limit(PREVIEW_TIMEOUT_S)
        assert isinstance(parsed, WandbSyncArgs)
        return await _preview(runner, call, parsed, runner.context(call))


async def _preview(
    runner: CallRunner, call: Call, args: WandbSyncArgs, ctx: BuildContext
) -> WandbPreview:
    out = await runner.execute(call, build_wandb_preview(args, ctx))
    try:
        listing = parse_wandb_preview(out, args)
    except UnparseableOutput as exc:
        raise unparseable(out, str(exc)) from None
    missing = sorted(set(args.runs or []) - {r.name for r in listing.wanted})
    if missing:
        failure = guard_failure("run_not_found")
        raise RemoteCommandError(
            f"{failure.message} Not found: {', '.join(missing)}.",
            kind=failure.kind,
            hint=failure.hint,
            details={"missing_runs": missing},
        )
    names = [r.name for r in listing.wanted]
    return WandbPreview(
        runs=listing.wanted,
        total_bytes=sum(r.size_bytes for r in listing.wanted),
        all_runs=listing.all_runs,
        command=display_wandb_command(ctx, names) if names else "",
        wandb_available=listing.wandb_available,
        wandb_dir=ctx.wandb_dir,
        wandb_dir_exists=listing.dir_exists,
    )


async def wandb_sync(
    runner: CallRunner,
    call: Call,
    spec: OpSpec,
    args: Any,
    ctx: BuildContext,
    approve: bool,
    on_progress: ProgressFn | None,
) -> OpResult:
    assert isinstance(args, WandbSyncArgs)
    preview = await _preview(runner, call, args, ctx)
    names = [r.name for r in preview.runs]
    common: dict[str, Any] = {
        "op": spec.name,
        "request_id": call.request_id,
        "host": call.host,
        "repo": ctx.repo,
    }
    if not names:
        where = ctx.wandb_dir
        said = (
            f"Nothing to sync: every offline run in {where} is already synced."
            if preview.wandb_dir_exists
            else f"Nothing to sync: there is no wandb directory at {where} on the login node "
            "(relative paths are inside the repo; AEXP_RELAY_WANDB_DIR sets it)."
        )
        return WandbSyncResult(
            **common,
            duration_s=round(call.elapsed, 4),
            synced=[],
            command=None,
            output_tail=said,
        )
    if not approve:
        raise ConsentRequiredError(
            f"Uploading {len(names)} offline run(s), {human_size(preview.total_bytes)}, to "
            "Weights & Biases needs the user's approval. Nothing was uploaded.",
            preview=preview,
            hint="Show the user the runs, sizes and command in the preview. Only if they "
            "agree, run {op:wandb_sync} again with {set:approve} for the same runs.",
        )
    if not preview.wandb_available:
        failure = guard_failure("wandb_missing")
        raise RemoteCommandError(failure.message, kind=failure.kind, hint=failure.hint)
    pinned = args.model_copy(update={"runs": names})
    async with runner.repo_lock(call):
        out = await runner.execute(
            call, spec.build(pinned, ctx), spec=spec, on_progress=on_progress
        )
    return runner.result(call, spec, out, pinned, command=preview.command)
