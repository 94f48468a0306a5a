"""``aexp-relay-mcp sandbox``: the built-in sandbox, up until Ctrl-C, with copy-paste set-up."""

from __future__ import annotations

import json
import shlex
import signal
import sys
import time
from types import FrameType

from ...sandbox import Sandbox, sshd_available
from ..mcp.launch import server_command


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_sandbox(realistic: bool = False) -> int:
    standin = not sshd_available()
    if standin:
        print(
            "sshd is not installed: the sandbox uses a LOCAL STAND-IN for ssh, so ssh itself is "
            "not exercised. Install it for the real thing: sudo apt-get install -y openssh-server",
            file=sys.stderr,
        )
    signal.signal(signal.SIGTERM, _stop)
    profile = "noisy" if realistic and not standin else "clean"
    with Sandbox(standin=standin, profile=profile) as sb:
        env = sb.env()
        command, args = server_command()
        snippet = {"mcpServers": {"aexp": {"command": command, "args": args, "env": env}}}
        where = "LOCAL STAND-IN (no sshd)" if standin else f"sshd on 127.0.0.1:{sb.port}"
        print(f"Sandbox up: {where}, login user {sb.user.name}, {profile} login shell.")
        print(f"  origin      {sb.origin}")
        print(f"  cluster     {sb.cluster}   (the checkout the tools work on)")
        print(f"  other clone {sb.other}   (push here to play 'someone else pushed')")
        print("\nIn another terminal, point the CLI at it:\n")
        for key, value in env.items():
            print(f"export {key}={shlex.quote(value)}")
        print("\nthen try: aexp-relay-mcp status; aexp-relay-mcp repo-status; "
              "aexp-relay-mcp wandb-sync\n")  # fmt: skip
        print("Or use this .mcp.json for Claude Code or the MCP Inspector:\n")
        print(json.dumps(snippet, indent=2))
        print("\nCtrl-C stops the sandbox and removes everything it made.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("\nStopping the sandbox.", file=sys.stderr)
    return 0
