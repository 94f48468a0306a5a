"""How one remote command reaches the login node. Knows ssh, not git.

Every command is a POSIX ``sh`` script, handed to the account's login shell (bash, tcsh,
fish...) through the one seam, ``login_shell.for_login_shell``.

In order of preference:

1. **native mux**: a session on the host's shared connection, asked of the master
   directly (``mux.py``): no local process at all;
2. **ssh through the master**: ``ssh -o ControlMaster=no -o ControlPath=...``, when
   AEXP_RELAY_MUX_CLIENT=ssh, when ssh debug logging is on, or when the master would not
   talk to us;
3. **direct**: a fresh ``ssh`` login, when reuse is off or no master could start.

A session refused by the server (its MaxSessions) is retried, briefly, until the call's
deadline; the relay never falls back to a fresh login for it, since on an MFA host that
is a prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..model.config import RelayConfig
from ..model.errors import RelayError, RelayTimeoutError
from . import mux
from .argv import build_ssh_argv
from .login_shell import for_login_shell
from .masters import (
    MUX_FAILURE_MARKERS,
    ConnectionManager,
    Route,
    SharedConnection,
    master_start_timeout,
)
from .remote_kill import KILL_DONE, TERM_GRACE_S, build_kill_command, build_kill_matching
from .runner import OnStart, ProcessResult, ProcessTimeout, Runner, run_process
from .trust import vouch_for_handoff

REFUSED_RETRY_S = 0.05
# Waiting for a remote group to be gone after TERM (most exit at once; a slow login
# shell, or a busy login node, adds its start-up time to the kill call itself).
KILL_WAIT_S = 3.0
# The probe `status` compares a shell-starting call with: a subsystem nobody defines,
# which sshd refuses without starting the login shell. sshd logs the refusal at INFO.
NO_SHELL_PROBE = "aexp-relay-no-shell-probe"
# A direct connection uses no ControlPath at all: with ControlMaster=no, ssh would still
# use a master it finds at the ControlPath of the user's config, whoever's it is.
NO_CONTROL_PATH = "ControlPath=none"


@dataclass(frozen=True)
class RemoteRun:
    """A finished remote command and how it travelled."""

    result: ProcessResult
    multiplexed: bool
    via: str  # mux (native), ssh (spawned client over the master), direct (fresh login)
    warnings: tuple[str, ...] = ()  # a control socket of the user's that was passed over


# How long a master that lost its connection may take to exit before it counts as alive.
MASTER_EXIT_S = 0.3


async def master_gone(path: str) -> bool:
    """Whether the master at path is gone: its socket stops accepting within
    ``MASTER_EXIT_S`` (one that lost its connection exits at once), or it no longer
    answers an alive check."""
    stop = time.monotonic() + MASTER_EXIT_S
    while time.monotonic() < stop:
        if not mux.socket_accepts(path):
            return True
        await asyncio.sleep(0.02)
    return await mux.alive_check(path, timeout=1.0) is None


def through(path: str) -> list[str]:
    """ssh options for a session over the master at path, and nothing else: when the master
    is gone by the time ssh connects to it, ssh would log in by itself (a fresh login, a
    prompt on an MFA host); a ProxyCommand that fails stops that."""
    return [f"ControlPath={path}", "ProxyCommand=false"]


def _kill_command(pgid: int | None, needle: str, undo_s: float) -> str:
    """The kill for a group by its id, or, when its start never came back, by its marker."""
    grace = TERM_GRACE_S + undo_s
    if pgid is not None:
        return build_kill_command(pgid, term_grace_s=grace)
    return build_kill_matching(needle, term_grace_s=grace)


def _noted(result: ProcessResult, line: str) -> ProcessResult:
    """result, with a line of the relay's own at the end of its stderr."""
    return dataclasses.replace(result, stderr=f"{result.stderr}\naexp-relay: {line}\n")


class Transport:
    def __init__(
        self,
        config: RelayConfig,
        connections: ConnectionManager,
        *,
        runner: Runner = run_process,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.connections = connections
        self.runner = runner
        self.env = env
        self.clock = clock
        # Masters that are alive but would not talk to our client (another protocol
        # version): an ssh client talks to them for us.
        self._spawn_only: set[str] = set()

    def native(self, path: str) -> bool:
        return (
            self.config.mux_client == "native"
            and not self.config.ssh_verbose
            and path not in self._spawn_only
        )

    async def run(
        self,
        host: str,
        command: str,
        *,
        deadline: float,
        on_stderr: Callable[[bytes], None] | None = None,
        on_start: OnStart | None = None,
        verbose_log: Path | None = None,
        use_slot: bool = True,
    ) -> RemoteRun:
        """Run command (a POSIX sh script) on host before deadline, whatever the account's
        login shell. Raises ProcessTimeout (with the partial output), RelayTimeoutError,
        RelayDownError, FileNotFoundError (no ssh), login_shell.CommandTooLong."""
        command = for_login_shell(command)
        warnings: list[str] = []
        for _ in range(3):
            route = await self._route(host, deadline)
            if route.passed_over is not None:
                warnings.append(route.passed_over.warning(host, route.control_path))
            if route.control_path is None:
                break
            try:
                slot = (
                    self.connections.session_slot(route.control_path, deadline)
                    if use_slot
                    else contextlib.nullcontext()
                )
                async with slot:
                    run = await self._over_master(
                        host, route, command, deadline, on_stderr, on_start, verbose_log
                    )
                return dataclasses.replace(run, warnings=tuple(dict.fromkeys(warnings)))
            except mux.MasterUntrusted as exc:
                # Found out at connect time (who is at the other end), or not fit to hand to
                # a spawned ssh: never again; the next round takes the relay's own master.
                self.connections.distrust(exc.distrust)
            except mux.MasterUnavailable as exc:
                if exc.wedged:
                    # It accepts and never answers: ssh's own client would hang on it too.
                    break
                if mux.socket_accepts(route.control_path):
                    if route.control_path in self._spawn_only:
                        # Neither our client nor ssh's can talk to it: a login of our own.
                        break
                    # Alive, but not a master our client can talk to: ssh's own can.
                    self._spawn_only.add(route.control_path)
                else:
                    # It died between the check and the call: the next round starts a
                    # new one (or connects directly).
                    self.connections.forget(route.control_path)
        result = await self._spawn(
            host, command, [NO_CONTROL_PATH], deadline, on_stderr, on_start, verbose_log
        )
        return RemoteRun(result, False, "direct", tuple(dict.fromkeys(warnings)))

    async def _route(self, host: str, deadline: float) -> Route:
        try:
            return await asyncio.wait_for(
                self.connections.route(host, deadline), max(0.01, deadline - self.clock())
            )
        except asyncio.TimeoutError:
            raise master_start_timeout(host) from None

    async def _over_master(
        self,
        host: str,
        route: Route,
        command: str,
        deadline: float,
        on_stderr: Callable[[bytes], None] | None,
        on_start: OnStart | None,
        verbose_log: Path | None,
    ) -> RemoteRun:
        path = route.control_path
        assert path is not None
        if not self.native(path):
            # ssh connects on its own, later: only a path in a directory no one else can
            # write, holding a socket of the user's, is handed to it.
            distrust = vouch_for_handoff(path)
            if distrust is not None:
                raise mux.MasterUntrusted(distrust)
            result = await self._spawn(
                host, command, through(path), deadline, on_stderr, on_start, verbose_log
            )
            self.connections.note_result(path, result.stderr)
            if result.exit_code == 255 and any(m in result.stderr for m in MUX_FAILURE_MARKERS):
                # ssh's client could not use the master either (gone, or it would not talk):
                # nothing ran; the caller's next round decides where the call goes
                raise mux.MasterUnavailable(f"ssh could not use the master at {path}")
            # ssh's own mux client says nothing (at LogLevel ERROR) when the master dies
            if result.exit_code == 255 and await master_gone(path):
                result = _noted(result, mux.MASTER_CLOSED)
            return RemoteRun(result, multiplexed=True, via="ssh")
        while True:
            try:
                result = await mux.run_session(
                    path,
                    command,
                    timeout=self._left(deadline),
                    output_cap=self.config.output_cap,
                    on_stderr=on_stderr,
                    on_start=on_start,
                )
                # Ended without a status: the master went away (the connection dropped),
                # or, with the master alive, the command died of a signal on the host.
                if result.exit_code is None and await master_gone(path):
                    result = _noted(result, mux.MASTER_CLOSED)
                return RemoteRun(result, multiplexed=True, via="mux")
            except mux.SessionRefused:
                if self.clock() + REFUSED_RETRY_S >= deadline:
                    raise RelayTimeoutError(
                        f"{host} kept refusing new sessions on the shared connection until the "
                        "call's timeout (sshd's MaxSessions is reached).",
                        hint="Other sessions to this host share the connection (terminals, "
                        "other tools). Close some, or lower AEXP_RELAY_MAX_SESSIONS.",
                    ) from None
                await asyncio.sleep(REFUSED_RETRY_S)

    def ssh_argv(
        self,
        host: str,
        command: str,
        options: Sequence[str] = (),
        verbose_log: Path | None = None,
        *,
        connect_timeout: float | None = None,
    ) -> list[str]:
        return build_ssh_argv(
            ssh_bin=self.config.ssh_bin,
            host=host,
            remote_command=command,
            connect_timeout=connect_timeout or self.config.connect_timeout,
            ssh_config=self.config.ssh_config,
            verbose_log=verbose_log,
            extra_options=options,
        )

    async def _spawn(
        self,
        host: str,
        command: str,
        options: Sequence[str],
        deadline: float,
        on_stderr: Callable[[bytes], None] | None,
        on_start: OnStart | None,
        verbose_log: Path | None,
    ) -> ProcessResult:
        argv = self.ssh_argv(host, command, options, verbose_log)
        return await self.runner(
            argv,
            timeout=self._left(deadline),
            output_cap=self.config.output_cap,
            env=self.env,
            on_stderr=on_stderr,
            on_start=on_start,
        )

    def _left(self, deadline: float) -> float:
        return max(0.05, deadline - self.clock())

    # ------------------------------------------------------------------ remote kill

    async def kill_remote(
        self, host: str, pgid: int | None, *, needle: str = "", undo_s: float = 0.0
    ) -> bool:
        """End a remote process group (``pgid``, or every group whose command line holds
        ``needle`` when its start marker never arrived); True once gone. Takes no session
        slot: a kill must not wait behind the very calls it ends. ``undo_s``: how long the
        group may take, after TERM, to undo what it started before it gets KILL."""
        command = _kill_command(pgid, needle, undo_s)
        deadline = self.clock() + KILL_WAIT_S + undo_s
        try:
            run = await self.run(host, command, deadline=deadline, use_slot=False)
        except (ProcessTimeout, RelayError, mux.MuxError, OSError):
            return False  # a down host or a dead master: nothing more to do from here
        return KILL_DONE in run.result.stdout

    def kill_remote_detached(
        self, host: str, pgid: int | None, *, needle: str = "", undo_s: float = 0.0
    ) -> None:
        """Fire and forget, for shutdown: a short ``ssh ... kill`` in its own session that
        outlives this process and ends on its own. (Over the master while it lives; else a
        login of its own, so that nothing of the call's is left running there.)"""
        path = self.connections.live_path(host)
        argv = self.ssh_argv(
            host,
            for_login_shell(_kill_command(pgid, needle, undo_s)),
            [f"ControlPath={path}"] if path else [NO_CONTROL_PATH],
            connect_timeout=min(self.config.connect_timeout, 5),
        )
        with contextlib.suppress(OSError):
            subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )

    # ------------------------------------------------------------------ probes

    async def shared_connection(self, host: str) -> SharedConnection:
        """What the status check reports about the host's shared connection."""
        return await self.connections.check(host)

    async def ready(self, host: str, deadline: float) -> None:
        """Wait until a call to host would go straight out: its route known, its shared
        connection up. What a measurement waits for before it starts its clock."""
        await self._route(host, deadline)

    async def no_shell_round_trip(self, host: str, deadline: float) -> float | None:
        """Seconds for a session that starts no login shell (a subsystem sshd refuses):
        what a shell-starting call is compared with. None when it cannot be measured."""
        route = await self._route(host, deadline)
        started = self.clock()
        try:
            if route.control_path is not None and self.native(route.control_path):
                await mux.run_session(
                    route.control_path,
                    NO_SHELL_PROBE,
                    timeout=self._left(deadline),
                    output_cap=4096,
                    subsystem=True,
                )
            else:
                path = route.control_path
                handoff = path is not None and vouch_for_handoff(path) is None
                options = through(path) if path is not None and handoff else [NO_CONTROL_PATH]
                argv = self.ssh_argv(host, NO_SHELL_PROBE, options)
                argv.insert(1, "-s")
                await self.runner(argv, timeout=self._left(deadline), output_cap=4096, env=self.env)
        except (mux.MuxError, ProcessTimeout, OSError):
            return None
        return self.clock() - started
