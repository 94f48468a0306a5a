"""The consent op: upload offline wandb runs only with the user's yes.

Every call lists the runs first (the preview). Without approval the preview is the
answer (``consent_required``) and nothing is uploaded; with it, exactly the previewed
runs are uploaded, one ``wandb sync`` each, in name order, with progress per run. The
preview shows every command the upload will run (``commands``, or ``command_template``
and the runs): consent covers exactly what it shows.

A sweep is large: the selection arguments (``match``, ``after_run``, ``to_run``, ``limit``)
narrow it, and it is counted on the login node (``selected_count``, exact, whatever its
size). One preview shows, and one approval covers, a page of it: the first runs selected
(``PAGE_RUNS``); the rest are the next page's (``more_runs``, ``next_page``). An upload cut
short (timeout, cancel) says how many runs were uploaded, which are left, and the
arguments that continue it: runs already synced are always skipped, so nothing is uploaded
twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import anyio

from ..model.budget import JSON_CHARS, json_size
from ..model.config import DEFAULT_WANDB_TIMEOUT, WANDB_TIMEOUT_PER_RUN
from ..model.errors import (
    ConsentRequiredError,
    RelayDownError,
    RelayError,
    RelayTimeoutError,
    RemoteCommandError,
)
from ..model.results import OpResult, WandbPreview, WandbSyncResult
from ..model.text import human_size
from ..remote.failures import guard_failure
from ..remote.ops import (
    BuildContext,
    OpSpec,
    WandbListing,
    WandbSyncArgs,
    build_wandb_preview,
    parse_sync_lines,
    parse_wandb_preview,
    validate_request,
    wandb_command,
    wandb_command_template,
)
from ..remote.output import UnparseableOutput
from .call import Call
from .call_runner import MAX_TIMEOUT_S, CallRunner, ProgressFn
from .diagnose import script_failure, unparseable

PREVIEW_TIMEOUT_S = 30.0
PROGRESS_LINE = "aexp-run: "
# A preview travels inside the consent error, beside its message and hint: what it may take.
PREVIEW_CHARS = JSON_CHARS - 3_000
ONE_PER_RUN = "one `wandb sync` per run"


async def wandb_preview(
    runner: CallRunner,
    args: Mapping[str, Any] | None,
    *,
    ssh_host: str | None = None,
    remote_repo: str | None = None,
) -> WandbPreview:
    """The preview on its own (audited as op ``wandb_preview``): what would be uploaded."""
    call = runner.new_call("wandb_preview", args, ssh_host, remote_repo)
    with runner.ending(call):
        _, parsed = validate_request("wandb_sync", args)
        runner.target(call)
        call.set_limit(PREVIEW_TIMEOUT_S)
        assert isinstance(parsed, WandbSyncArgs)
        preview, _, _ = await _preview(runner, call, parsed, runner.context(call))
        return preview


async def _preview(
    runner: CallRunner, call: Call, args: WandbSyncArgs, ctx: BuildContext
) -> tuple[WandbPreview, list[str], int]:
    """The preview (lists cut to the budget), every name it selected, in order, and how
    many runs named explicitly were synced already."""
    out = await runner.execute(call, build_wandb_preview(args, ctx), retry=True)
    try:
        listing = parse_wandb_preview(out, args)
    except UnparseableOutput as exc:
        raise unparseable(out, str(exc)) from None
    if listing.missing:
        failure = guard_failure("run_not_found")
        raise RemoteCommandError(
            f"{failure.message} Not found: {', '.join(listing.missing)}.",
            kind=failure.kind,
            hint=failure.hint,
            details={"missing_runs": listing.missing},
        )
    names = [r.name for r in listing.page]
    return describe(listing, args, ctx), names, len(listing.skipped)


def describe(listing: WandbListing, args: WandbSyncArgs, ctx: BuildContext) -> WandbPreview:
    """The preview of one page: its runs, every command the upload would run for them (or,
    when those would not fit, the template), and what the selection holds beyond it."""
    names = [r.name for r in listing.page]
    more = listing.selected - len(names)
    next_page = None
    if more > 0 and names:
        next_page = {
            key: value
            for key, value in args.model_dump(exclude_none=True).items()
            if key != "limit"
        }
        next_page["after_run"] = names[-1]
        if args.limit is not None:
            next_page["limit"] = args.limit - len(names)
    preview = WandbPreview(
        runs=listing.page,
        run_count=len(names),
        total_bytes=sum(r.size_bytes for r in listing.page),
        first_run=names[0] if names else None,
        last_run=names[-1] if names else None,
        command_template=wandb_command_template(ctx),
        commands=[wandb_command(ctx, name) for name in names],
        selected_count=listing.selected,
        selected_bytes=listing.selected_bytes,
        more_runs=more,
        next_page=next_page,
        all_runs=listing.all_runs,
        unsynced_runs=listing.unsynced,
        wandb_available=listing.wandb_available,
        wandb_dir=ctx.wandb_dir,
        wandb_dir_exists=listing.dir_exists,
    )
    if json_size(preview.model_dump(mode="json")) > PREVIEW_CHARS:
        # all or none: the template and the runs show the same, whole
        preview = preview.model_copy(update={"commands": []})
    return preview


def sweep_timeout(runs: int) -> float:
    """The default limit for an upload: a sweep, not one run."""
    return min(MAX_TIMEOUT_S, max(DEFAULT_WANDB_TIMEOUT, 120.0 + WANDB_TIMEOUT_PER_RUN * runs))


async def wandb_sync(
    runner: CallRunner,
    call: Call,
    spec: OpSpec,
    args: Any,
    ctx: BuildContext,
    approve: bool,
    on_progress: ProgressFn | None,
    *,
    timeout_given: bool,
) -> OpResult:
    assert isinstance(args, WandbSyncArgs)
    preview, names, skipped = await _preview(runner, call, args, ctx)
    common: dict[str, Any] = {
        "op": spec.name,
        "request_id": call.request_id,
        "host": call.host,
        "repo": ctx.repo,
    }
    if not names:
        where = ctx.wandb_dir
        said = (
            f"Nothing to sync: every offline run in {where} that the arguments select is "
            "already synced."
            if preview.wandb_dir_exists
            else f"Nothing to sync: there is no wandb directory at {where} on the login node "
            "(relative paths are inside the repo; AEXP_RELAY_WANDB_DIR sets it)."
        )
        return WandbSyncResult(
            **common,
            duration_s=round(call.elapsed, 4),
            synced=[],
            synced_count=0,
            already_synced=skipped,
            runs_truncated=False,
            command_template=None,
            output_tail=said,
            warnings=list(call.warnings),
        )
    if not approve:
        more = preview.more_runs
        raise ConsentRequiredError(
            f"Uploading {len(names)} offline run(s), {human_size(preview.total_bytes)}, to "
            f"Weights & Biases ({ONE_PER_RUN}) needs the user's approval. Nothing was "
            "uploaded."
            + (
                f" {more} more selected run(s) are not in this preview, and an approval does "
                "not cover them."
                if more
                else ""
            ),
            preview=preview,
            hint="Show the user the runs and the commands in the preview ("
            + ONE_PER_RUN
            + ": `commands`, or `command_template` for each of `runs`). Only if they agree, "
            "run {op:wandb_sync} again with {set:approve} and the same arguments: it uploads "
            "exactly these runs."
            + (
                " For the runs after them: the same arguments again once these are uploaded, "
                "or `next_page` to preview them now."
                if more
                else ""
            ),
        )
    if not preview.wandb_available:
        failure = guard_failure("wandb_missing")
        raise RemoteCommandError(failure.message, kind=failure.kind, hint=failure.hint)
    if not timeout_given:
        call.set_limit(max(call.deadline - call.started, sweep_timeout(len(names))))
    pinned = args.model_copy(update={"runs": names})
    progress = _RunProgress(on_progress) if on_progress else None
    try:
        async with runner.repo_lock(call):
            out = await runner.execute(
                call,
                spec.build(pinned, ctx),
                spec=spec,
                check=False,
                on_stderr=progress.feed if progress else None,
            )
    except (RelayTimeoutError, RelayDownError) as exc:
        # cut off (a timeout, a dropped connection): say which runs went up, which are left
        if isinstance(exc, RelayDownError) and exc.kind != "connection_dropped":
            raise
        raise await _stopped(runner, call, args, names, ctx, exc) from None
    except asyncio.CancelledError:
        with anyio.CancelScope(shield=True):
            left = await _left_of(runner, call, names, ctx)
            if left is not None:  # no result goes back: the audit line says it
                call.trace.update(uploaded_count=len(names) - len(left), left_count=len(left))
        raise
    if out.exit_code != 0:
        error = script_failure(out, spec.name, call.host or "", ctx.repo)
        sync = out.section("sync")
        seen = parse_sync_lines(sync.stdout if sync is not None else "")
        done = set(seen["uploaded"]) | set(seen["skipped"])
        raise _with_what_is_left(error, args, names, [n for n in names if n not in done])
    result = runner.result(
        call,
        spec,
        out,
        pinned,
        command_template=preview.command_template,
        more_runs=preview.more_runs,
    )
    assert isinstance(result, WandbSyncResult)
    return result.model_copy(update={"already_synced": result.already_synced + skipped})


class _RunProgress:
    """Reads the sync loop's "aexp-run: k/n name" lines off stderr: run k of n."""

    def __init__(self, callback: ProgressFn) -> None:
        self.callback = callback
        self.pending = b""

    def feed(self, chunk: bytes) -> None:
        lines = (self.pending + chunk).split(b"\n")
        self.pending = lines.pop()[-512:]
        for line in lines:
            text = line.decode(errors="replace").strip()
            if not text.startswith(PROGRESS_LINE):
                continue
            count, _, name = text[len(PROGRESS_LINE) :].partition(" ")
            done, _, total = count.partition("/")
            if done.isdigit() and total.isdigit() and int(total):
                percent = 100.0 * int(done) / int(total)
                self.callback(percent, f"run {done} of {total} uploaded: {name}")


async def _left_of(
    runner: CallRunner, call: Call, names: list[str], ctx: BuildContext
) -> list[str] | None:
    """Which of the approved runs are not synced yet, asked of the login node itself
    (a run is synced once wandb wrote its marker). None when that cannot be known."""
    check = runner.new_call("wandb_preview", None, call.host, call.repo)
    check.set_limit(PREVIEW_TIMEOUT_S)
    listing_args = WandbSyncArgs(runs=names)
    try:
        with runner.ending(check):
            out = await runner.execute(check, build_wandb_preview(listing_args, ctx))
            listing = parse_wandb_preview(out, listing_args)
    except (RelayError, UnparseableOutput):
        return None
    unsynced = {r.name for r in listing.page}
    return [n for n in names if n in unsynced]


async def _stopped(
    runner: CallRunner,
    call: Call,
    args: WandbSyncArgs,
    names: list[str],
    ctx: BuildContext,
    exc: RelayError,
) -> RelayError:
    left = await _left_of(runner, call, names, ctx)
    if left is None:
        exc.message += (
            " Which runs were uploaded could not be checked: preview again "
            "({op:wandb_sync} without approve) to see the ones left."
        )
        return exc
    return _with_what_is_left(exc, args, names, left)


def _with_what_is_left(
    error: RelayError, args: WandbSyncArgs, names: list[str], left: list[str]
) -> RelayError:
    """Say how far an approved upload got, what is left, and how to continue it."""
    done = [n for n in names if n not in set(left)]
    error.message += (
        f" Of the {len(names)} approved run(s), {len(done)} were uploaded and {len(left)} are left."
    )
    error.details.update(
        approved_count=len(names),
        uploaded_count=len(done),
        uploaded=done,
        left_count=len(left),
        left=left,
    )
    if left:
        error.details["continue_with"] = continue_with(args, names)
        error.hint_template = (
            "The user approved the whole preview, and that consent covers the runs left: call "
            "{op:wandb_sync} with the arguments in continue_with (approve included) to upload "
            "them. Runs already uploaded are skipped; nothing is uploaded twice. "
            + (
                "Pass a larger {arg:timeout} if it keeps running out. "
                if isinstance(error, RelayTimeoutError)
                else ""
            )
        ).strip()
    return error


def continue_with(args: WandbSyncArgs, names: list[str]) -> dict[str, Any]:
    """Arguments that select exactly the approved runs not uploaded yet: the same
    selection, bounded by the last approved run (uploaded ones are skipped as synced)."""
    selection: dict[str, Any] = {"approve": True}
    if args.runs is not None:
        selection["runs"] = names
    else:
        for key in ("match", "after_run"):
            value = getattr(args, key)
            if value is not None:
                selection[key] = value
        selection["to_run"] = names[-1]
    return selection
