"""RelayClient: the API the adapters use. validate -> build -> run -> parse -> audit.

It builds the pieces (configuration, audit log, shared connections, transport, the
``CallRunner``) and sends each request to its flow: ``repo_ops`` for the git ops,
``wandb_sync`` for the consent op, ``status_check`` for the connection check.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from ..model.config import RelayConfig
from ..model.errors import LIBRARY, RelayError, RelayValidationError, Surface
from ..model.results import ConnectionStatus, OpResult, WandbPreview
from ..remote.ops import validate_request
from ..ssh.masters import ConnectionManager
from ..ssh.runner import Runner, run_process
from ..ssh.transport import Transport
from .audit import AuditLog
from .call import LiveCalls
from .call_runner import CallRunner, ProgressFn
from .repo_ops import run_repo_op
from .status_check import check_connection
from .wandb_sync import wandb_preview, wandb_sync


class RelayClient:
    """Runs whitelisted ops on ``ssh_host`` in ``remote_repo``.

    ``runner`` and ``clock`` are injected so pure tests can substitute them;
    everything else uses the real ssh. ``surface`` says how hints name ops.
    """

    def __init__(
        self,
        ssh_host: str | None = None,
        remote_repo: str | None = None,
        *,
        timeout: float | None = None,
        config: RelayConfig | None = None,
        runner: Runner = run_process,
        audit: AuditLog | None = None,
        surface: Surface = LIBRARY,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        base = config if config is not None else RelayConfig.from_env()
        self.config = base.replace(
            ssh_host=ssh_host or base.ssh_host,
            remote_repo=remote_repo or base.remote_repo,
            timeout=timeout if timeout is not None else base.timeout,
        )
        self.audit = audit if audit is not None else AuditLog(self.config.audit_log)
        self.surface = surface
        self.connections = ConnectionManager(self.config, clock)
        self.transport = Transport(
            self.config, self.connections, runner=runner, env=env, clock=clock
        )
        self.runner = CallRunner(
            self.config,
            audit=self.audit,
            transport=self.transport,
            surface=surface,
            clock=clock,
        )

    @property
    def calls(self) -> LiveCalls:
        """Every call that has reached ssh and not ended yet (what a shutdown interrupts)."""
        return self.runner.live

    @property
    def shutting_down(self) -> Callable[[], bool]:
        return self.runner.shutting_down

    @shutting_down.setter
    def shutting_down(self, judge: Callable[[], bool]) -> None:
        """Set by the server: True once its client has gone (stdin closed)."""
        self.runner.shutting_down = judge

    async def request(
        self,
        op: str,
        args: Mapping[str, Any] | None = None,
        *,
        ssh_host: str | None = None,
        remote_repo: str | None = None,
        approve: bool = False,
        timeout: float | None = None,
        on_progress: ProgressFn | None = None,
    ) -> OpResult:
        """Run one op. Returns its frozen result or raises a RelayError.

        ``on_progress(percent, message)`` is called as git reports progress.
        """
        runner = self.runner
        call = runner.new_call(op, args, ssh_host, remote_repo, approved=approve)
        with runner.ending(call):
            spec, parsed = validate_request(op, args)
            runner.target(call)
            if not isinstance(approve, bool):
                raise RelayValidationError(
                    "approve must be true or false.",
                    hint="Pass {set:approve} only after the user agreed.",
                )
            call.set_limit(runner.limit_for(spec, timeout))
            ctx = runner.context(call)
            if spec.consent:
                result = await wandb_sync(
                    runner,
                    call,
                    spec,
                    parsed,
                    ctx,
                    approve,
                    on_progress,
                    timeout_given=timeout is not None,
                )
            else:
                result = await run_repo_op(runner, call, spec, parsed, ctx, on_progress)
        return result

    async def check_connection(
        self,
        ssh_host: str | None = None,
        remote_repo: str | None = None,
        *,
        timeout: float | None = None,
    ) -> ConnectionStatus:
        """Reachability, round trip, repo, branch, git version, wandb and the login shell;
        never raises for an unreachable host (that is a normal answer, with a hint)."""
        return await check_connection(self.runner, ssh_host, remote_repo, timeout=timeout)

    async def wandb_preview(
        self,
        runs: list[str] | None = None,
        *,
        ssh_host: str | None = None,
        remote_repo: str | None = None,
        **selection: Any,
    ) -> WandbPreview:
        """What ``wandb_sync`` would upload: runs, sizes and the exact command. Uploads
        nothing. ``selection``: ``match``, ``after_run``, ``to_run``, ``limit``."""
        args = {k: v for k, v in {"runs": runs, **selection}.items() if v is not None}
        return await wandb_preview(
            self.runner, args or None, ssh_host=ssh_host, remote_repo=remote_repo
        )

    def record_refusal(
        self,
        op: str,
        args: Mapping[str, Any] | None,
        error: RelayError,
        *,
        ssh_host: str | None = None,
        remote_repo: str | None = None,
    ) -> None:
        """One audit line for a call an adapter refused before it reached ssh."""
        self.runner.fail(self.runner.new_call(op, args, ssh_host, remote_repo), error)


__all__ = ["RelayClient"]
