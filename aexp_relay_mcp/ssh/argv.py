"""Pure: the argv of an ssh client call. Debug output never goes to our pipe."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..model.config import RelayConfig
from ..model.targets import validate_host


def ssh_base(config: RelayConfig) -> list[str]:
    """The ssh program and the user's chosen config file (``-F``), before any option."""
    argv = [config.ssh_bin]
    if config.ssh_config:
        argv += ["-F", config.ssh_config]
    return argv


def build_ssh_argv(
    *,
    ssh_bin: str,
    host: str,
    remote_command: str,
    connect_timeout: float,
    ssh_config: str | None = None,
    verbose_log: Path | None = None,
    extra_options: Sequence[str] = (),
) -> list[str]:
    """``ssh -n -T -o BatchMode=yes ... -- host cmd``. Debug output never goes to our pipe."""
    argv = [
        ssh_bin,
        "-n",
        "-T",
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={max(1, round(connect_timeout))}",
        "-o",
        "ControlMaster=no",
    ]
    for opt in extra_options:
        argv += ["-o", opt]
    if ssh_config:
        argv += ["-F", ssh_config]
    if verbose_log is not None:
        argv += ["-E", str(verbose_log), "-vv"]
    argv += ["--", validate_host(host), remote_command]
    return argv
