"""``aexp-relay-mcp init``: register the server in ``.mcp.json`` and print the ssh set-up.

Merging is careful: every other server and key is kept, the write is atomic (temp
file + rename) with a backup of the previous file, a second run with the same values
changes nothing, a conflicting value is refused (naming both) unless ``--force``, and
malformed JSON is refused with its position and never overwritten.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..mcp.launch import server_command

SERVER_KEY = "aexp"


class InitError(Exception):
    """A refusal: the message says what is wrong and what to do instead."""


@dataclass(frozen=True)
class InitOutcome:
    path: Path
    changed: bool
    created: bool
    backup: Path | None
    entry: dict[str, Any]


# Claude Code expands ${NAME} in .mcp.json values on *your* machine; $NAME it leaves alone,
# for the login node to expand.
_BRACED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}(?![A-Za-z0-9_])")


def for_mcp_json(path: str) -> str:
    """A repo path as .mcp.json must hold it: ${SCRATCH}/x as $SCRATCH/x."""
    return _BRACED.sub(r"$\1", path)


def desired_entry(host: str, repo: str) -> dict[str, Any]:
    command, args = server_command()
    return {
        "command": command,
        "args": args,
        "env": {"AEXP_RELAY_SSH_HOST": host, "AEXP_RELAY_REMOTE_REPO": for_mcp_json(repo)},
    }


def load_config(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise InitError(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}. "
            "It was not changed. Fix it (or move it away) and run init again."
        ) from None
    if not isinstance(data, dict):
        raise InitError(f"{path} must hold a JSON object; it was not changed.")
    servers = data.get("mcpServers", {})
    if not isinstance(servers, dict):
        raise InitError(f"{path}: mcpServers must be a JSON object; the file was not changed.")
    return data


def merge(existing: dict[str, Any] | None, want: dict[str, Any], force: bool) -> dict[str, Any]:
    """The new file content. Raises InitError on a conflict without force."""
    data = dict(existing or {})
    servers = dict(data.get("mcpServers", {}))
    current = servers.get(SERVER_KEY)
    if isinstance(current, dict):
        conflicts = []
        if current.get("command") not in (None, want["command"]):
            conflicts.append(("command", current.get("command"), want["command"]))
        raw_env = current.get("env")
        env: dict[str, Any] = raw_env if isinstance(raw_env, dict) else {}
        for key, value in want["env"].items():
            if env.get(key) not in (None, value):
                conflicts.append((f"env.{key}", env.get(key), value))
        if conflicts and not force:
            described = "; ".join(
                f"{k}: has {old!r}, init wants {new!r}" for k, old, new in conflicts
            )
            raise InitError(
                f"mcpServers.{SERVER_KEY} already exists with different values ({described}). "
                "Nothing was changed. Re-run with --force to replace them."
            )
        merged = {**current, "command": want["command"], "args": want["args"]}
        merged["env"] = {**env, **want["env"]}
        servers[SERVER_KEY] = merged
    else:
        servers[SERVER_KEY] = want
    data["mcpServers"] = servers
    return data


def write_atomically(path: Path, data: dict[str, Any]) -> Path | None:
    """Write via temp file + rename; keep the previous file as ``<name>.bak``."""
    directory = path.parent if str(path.parent) else Path(".")
    backup = None
    if path.exists():
        backup = path.with_name(path.name + ".bak")
        shutil.copy2(path, backup)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return backup


def update_mcp_config(path: Path, host: str, repo: str, force: bool) -> InitOutcome:
    existing = load_config(path)
    want = desired_entry(host, repo)
    new = merge(existing, want, force)
    if existing is not None and new == existing:
        return InitOutcome(path, False, False, None, new["mcpServers"][SERVER_KEY])
    try:
        backup = write_atomically(path, new)
    except OSError as exc:
        raise InitError(
            f"Cannot write {path}: {exc.strerror}. Nothing was changed. "
            "Run init in a directory you can write, or pass --mcp-config PATH."
        ) from None
    return InitOutcome(path, True, existing is None, backup, new["mcpServers"][SERVER_KEY])


def ssh_settings(host: str, ssh_bin: str = "ssh", ssh_config: str | None = None) -> dict[str, str]:
    """``ssh -G``: what ssh would use for host, without connecting."""
    argv = [ssh_bin, *(["-F", ssh_config] if ssh_config else []), "-G", "--", host]
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InitError(
            f"Could not run {ssh_bin} -G: {exc}. Is the OpenSSH client installed?"
        ) from None
    if proc.returncode != 0:
        raise InitError(f"ssh -G rejected host {host!r}: {proc.stderr.strip()}")
    values: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        values.setdefault(key.lower(), value)
    return values


def ssh_config_block(host: str, settings: dict[str, str]) -> str:
    alias = host.split("@", 1)[-1]
    user = host.split("@", 1)[0] if "@" in host else settings.get("user", "")
    lines = [
        f"Host {alias}",
        f"    HostName {settings.get('hostname', alias)}",
    ]
    if user:
        lines.append(f"    User {user}")
    if settings.get("port", "22") != "22":
        lines.append(f"    Port {settings['port']}")
    lines += [
        "    # one login per session, reused by the relay and your terminals",
        "    ControlMaster auto",
        "    ControlPath ~/.ssh/cm-%C",
        "    ControlPersist 10m",
        "    ServerAliveInterval 30",
    ]
    return "\n".join(lines) + "\n"


def next_steps(host: str, repo: str, outcome: InitOutcome) -> str:
    # Quoted for a local shell: a ~/ path must reach the login node unexpanded.
    alias = host.split("@", 1)[-1]
    command, args = outcome.entry["command"], outcome.entry.get("args", [])
    env = " ".join(f"--env {shlex.quote(f'{k}={v}')}" for k, v in outcome.entry["env"].items())
    q_host, q_repo = shlex.quote(host), shlex.quote(repo)
    return f"""Next steps:
  1. Keys: load your key into ssh-agent (`ssh-add`), so no prompt is needed; do not remove
     the key's passphrase. Check with: ssh {alias} true
  2. MFA / Duo clusters: run `aexp-relay-mcp connect {q_host}` once in a terminal; every
     call, from every agent session, reuses that login until `aexp-relay-mcp disconnect`
     (or 12 idle hours).
  3. Restart your MCP client, or reconnect it (`/mcp` in Claude Code), to load the server.
  4. Instead of the file, Claude Code can register it directly:
       claude mcp add {SERVER_KEY} {env} -- {shlex.join([command, *args])}
  5. Check end to end: aexp-relay-mcp status --host {q_host} --repo {q_repo}"""
