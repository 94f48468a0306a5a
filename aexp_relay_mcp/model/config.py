"""RelayConfig: every setting, loaded in one place from arguments and the environment.

Nothing else in the package reads ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import RelayValidationError
from .targets import normalize_repo, validate_wandb_dir

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_OP_TIMEOUT = 60.0
DEFAULT_WANDB_TIMEOUT = 600.0
# An upload's default limit grows with its runs: a sweep, not one run.
WANDB_TIMEOUT_PER_RUN = 60.0
DEFAULT_OUTPUT_CAP = 1024 * 1024
DEFAULT_AUDIT_LOG = "~/.aexp/airgapped-relay.log"
DEFAULT_SSH_BIN = "ssh"
DEFAULT_WANDB = "wandb"
DEFAULT_WANDB_DIR = "wandb"
# Seconds the login node's `timeout -k` waits past the call's own timeout before it
# stops the remote command, so the local side always gives up first and reports.
REMOTE_TIMEOUT_GRACE = 5.0
DEFAULT_CONTROL_PERSIST = "10m"
# How long a connection opened by `aexp-relay-mcp connect` (an explicit login, often with
# MFA) stays up when idle: a working day, so one MFA prompt covers it.
DEFAULT_CONNECT_PERSIST = "12h"
MUX_CLIENTS = ("native", "ssh")
# ssh expands ~ and %C itself; the path must stay short (sockets fit in ~104 bytes).
DEFAULT_CONTROL_DIR = "~/.aexp/cm"
DEFAULT_MAX_SESSIONS = 8

# name -> meaning; the docs table and `--help` are generated from this.
ENV_VARS: dict[str, str] = {
    "AEXP_RELAY_SSH_HOST": "default host (an ssh alias or user@host)",
    "AEXP_RELAY_REMOTE_REPO": (
        "default repo path on the host: absolute, ~/..., or with variables the login shell "
        "sets ($SCRATCH/exp, ${WORK}/exp, /scratch/$USER/exp)"
    ),
    "AEXP_RELAY_SSH_CONFIG": "an ssh config file, passed to ssh as -F",
    "AEXP_RELAY_SSH_BIN": "the ssh program (default ssh)",
    "AEXP_RELAY_SSH_VERBOSE": "1 turns on ssh -vv into a log file (never into the captured stderr)",
    "AEXP_RELAY_CONNECT_TIMEOUT": (
        f"ssh ConnectTimeout in seconds (default {DEFAULT_CONNECT_TIMEOUT:g})"
    ),
    "AEXP_RELAY_TIMEOUT": (
        f"default per-call timeout in seconds (default {DEFAULT_OP_TIMEOUT:g}; wandb_sync "
        f"{DEFAULT_WANDB_TIMEOUT:g}, or 120 + {WANDB_TIMEOUT_PER_RUN:g} per run for a larger "
        "upload)"
    ),
    "AEXP_RELAY_WANDB": (
        "the remote wandb command (default wandb); an absolute path is most reliable"
    ),
    "AEXP_RELAY_WANDB_DIR": (
        "where the offline runs live: relative to the repo (default wandb), absolute, ~/..., "
        "or with variables ($SCRATCH/wandb)"
    ),
    "AEXP_RELAY_AUDIT_LOG": f"the audit log path (default {DEFAULT_AUDIT_LOG})",
    "AEXP_RELAY_OUTPUT_CAP": f"bytes kept per output stream (default {DEFAULT_OUTPUT_CAP})",
    "AEXP_RELAY_CONTROL_PERSIST": (
        "how long the shared ssh connection (ControlMaster) stays up when idle, in ssh "
        "ControlPersist form (default 10m); no turns connection reuse off"
    ),
    "AEXP_RELAY_CONTROL_DIR": (
        f"where the relay keeps shared-connection sockets and lock files (default "
        f"{DEFAULT_CONTROL_DIR}); keep it short, a socket path must fit in ~100 bytes"
    ),
    "AEXP_RELAY_CONNECT_PERSIST": (
        "how long the connection opened by `aexp-relay-mcp connect` stays up when idle "
        f"(default {DEFAULT_CONNECT_PERSIST}; it always ends with `disconnect`)"
    ),
    "AEXP_RELAY_MAX_SESSIONS": (
        "concurrent ssh sessions per shared connection, counted across every relay process "
        "on this machine (default 8; keep it below sshd's MaxSessions, 10)"
    ),
    "AEXP_RELAY_MUX_CLIENT": (
        "how calls use the shared connection: native (default; the relay speaks OpenSSH's "
        "multiplexing protocol itself) or ssh (spawn an ssh client per call)"
    ),
    "AEXP_RELAY_ALLOWED_HOSTS": (
        "comma-separated ssh hosts the agent may target; when set, any other ssh_host is refused"
    ),
    "AEXP_RELAY_ALLOWED_REPOS": (
        "comma-separated repo paths the agent may target; when set, any other remote_repo is "
        "refused (compared as written, trailing / ignored)"
    ),
    "AEXP_RELAY_LOG_LEVEL": "server log level on stderr: DEBUG, INFO, WARNING (default), ERROR",
    "AEXP_RELAY_CONSENT": (
        "who approves consent ops in the MCP server: agent (default: approve=true from the "
        "agent) or elicit (the human must confirm through MCP elicitation; fails closed)"
    ),
}
CONSENT_MODES = ("agent", "elicit")
LOG_LEVELS = ("warning", "debug", "info", "error")


@dataclass(frozen=True)
class RelayConfig:
    ssh_host: str | None = None
    remote_repo: str | None = None
    ssh_config: str | None = None
    ssh_bin: str = DEFAULT_SSH_BIN
    ssh_verbose: bool = False
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    timeout: float | None = None  # None: each op's own default
    wandb: str = DEFAULT_WANDB
    wandb_dir: str = DEFAULT_WANDB_DIR
    audit_log: Path | None = dataclasses.field(
        default_factory=lambda: Path(DEFAULT_AUDIT_LOG).expanduser()
    )
    output_cap: int = DEFAULT_OUTPUT_CAP
    verbose_log_dir: Path = dataclasses.field(
        default_factory=lambda: Path("~/.aexp/ssh-logs").expanduser()
    )
    consent: str = "agent"
    control_persist: str = DEFAULT_CONTROL_PERSIST
    connect_persist: str = DEFAULT_CONNECT_PERSIST
    mux_client: str = "native"
    control_dir: str = DEFAULT_CONTROL_DIR
    max_sessions: int = DEFAULT_MAX_SESSIONS
    allowed_hosts: tuple[str, ...] = ()
    allowed_repos: tuple[str, ...] = ()
    log_level: str = "WARNING"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> RelayConfig:
        """Build from the environment, then apply non-None keyword overrides."""
        env = os.environ if env is None else env

        def text(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        values: dict[str, object] = {
            "ssh_host": text("AEXP_RELAY_SSH_HOST"),
            "remote_repo": text("AEXP_RELAY_REMOTE_REPO"),
            "ssh_config": text("AEXP_RELAY_SSH_CONFIG"),
            "ssh_bin": text("AEXP_RELAY_SSH_BIN") or DEFAULT_SSH_BIN,
            "ssh_verbose": _flag(env, "AEXP_RELAY_SSH_VERBOSE"),
            "connect_timeout": _number(env, "AEXP_RELAY_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT),
            "timeout": _number(env, "AEXP_RELAY_TIMEOUT", None),
            "wandb": text("AEXP_RELAY_WANDB") or DEFAULT_WANDB,
            "wandb_dir": validate_wandb_dir(text("AEXP_RELAY_WANDB_DIR") or DEFAULT_WANDB_DIR),
            "output_cap": int(_number(env, "AEXP_RELAY_OUTPUT_CAP", DEFAULT_OUTPUT_CAP) or 0),
            "consent": _choice(env, "AEXP_RELAY_CONSENT", CONSENT_MODES),
            "allowed_hosts": _list(text("AEXP_RELAY_ALLOWED_HOSTS")),
            "allowed_repos": tuple(
                normalize_repo(r) for r in _list(text("AEXP_RELAY_ALLOWED_REPOS"))
            ),
            "control_persist": _control_persist(
                "AEXP_RELAY_CONTROL_PERSIST", text("AEXP_RELAY_CONTROL_PERSIST")
            ),
            "connect_persist": _control_persist(
                "AEXP_RELAY_CONNECT_PERSIST",
                text("AEXP_RELAY_CONNECT_PERSIST"),
                DEFAULT_CONNECT_PERSIST,
            ),
            "mux_client": _choice(env, "AEXP_RELAY_MUX_CLIENT", MUX_CLIENTS),
            "control_dir": text("AEXP_RELAY_CONTROL_DIR") or DEFAULT_CONTROL_DIR,
            "max_sessions": int(_number(env, "AEXP_RELAY_MAX_SESSIONS", DEFAULT_MAX_SESSIONS) or 1),
            "log_level": _choice(env, "AEXP_RELAY_LOG_LEVEL", LOG_LEVELS).upper(),
        }
        audit = text("AEXP_RELAY_AUDIT_LOG")
        if audit:
            values["audit_log"] = Path(audit).expanduser()
        home = text("HOME")
        if home and not audit:
            values["audit_log"] = Path(home) / ".aexp" / "airgapped-relay.log"
        if home:
            values["verbose_log_dir"] = Path(home) / ".aexp" / "ssh-logs"
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def replace(self, **changes: object) -> RelayConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _list(raw: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in (raw or "").split(",") if item.strip())


def _control_persist(name: str, raw: str | None, default: str = DEFAULT_CONTROL_PERSIST) -> str:
    """ssh ControlPersist syntax: no, yes, or a time like 600, 10m, 1h30m."""
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in ("no", "yes") or re.fullmatch(r"(\d+[smhdw]?)+", value):
        return value
    raise RelayValidationError(
        f"{name}={raw!r} is not an ssh ControlPersist value.",
        hint="Use no (reuse off), or a duration such as 600, 10m or 1h.",
    )


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower() or choices[0]
    if raw not in choices:
        raise RelayValidationError(
            f"{name}={raw!r} is not one of {', '.join(choices)}.",
            hint=f"Set {name} to one of: {', '.join(choices)}, or unset it.",
        )
    return raw


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _number(env: Mapping[str, str], name: str, default: float | None) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise RelayValidationError(
            f"{name}={raw!r} is not a number.",
            hint=f"Set {name} to a positive number of seconds, or unset it.",
        ) from None
    if not value > 0:
        raise RelayValidationError(
            f"{name}={raw!r} must be greater than zero.",
            hint=f"Set {name} to a positive number, or unset it.",
        )
    return value
