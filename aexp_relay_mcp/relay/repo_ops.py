"""The git ops (repo_status, fetch, pull, rebase, push): one remote script each, run
under the checkout's lock when they change it."""

from __future__ import annotations

import asyncio
from typing import Any

from ..model.results import OpResult
from ..remote.ops import BuildContext, OpSpec
from .call import Call
from .call_runner import CallRunner, ProgressFn


async def run_repo_op(
    runner: CallRunner,
    call: Call,
    spec: OpSpec,
    args: Any,
    ctx: BuildContext,
    on_progress: ProgressFn | None,
) -> OpResult:
    after_drop = spec.after_drop(args, ctx) if spec.after_drop is not None else None
    async with _held(runner.repo_lock(call), spec.mutating):
        out = await runner.execute(
            call, spec.build(args, ctx), spec=spec, after_drop=after_drop, on_progress=on_progress
        )
    return runner.result(call, spec, out, args)


class _held:
    """``async with _held(lock, cond)``: hold the lock only when cond is true."""

    def __init__(self, lock: asyncio.Lock, hold: bool) -> None:
        self.lock, self.hold = lock, hold

    async def __aenter__(self) -> None:
        if self.hold:
            await self.lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        if self.hold:
            self.lock.release()
