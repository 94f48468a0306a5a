"""A small synchronous JSON-RPC driver for the real server over stdio.

The SDK's client is async and hides the process; this drives ``aexp-relay-mcp serve``
line by line, as a client like Claude Code does, so a caller can also signal the
process, close its stdin, or kill it mid-call. It is strict: every line on stdout must
be JSON-RPC. Used by ``--selftest --realistic`` and by the tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...sandbox import Sandbox


class ProtocolViolation(AssertionError):
    pass


@dataclass(frozen=True)
class Stopped:
    """How a server ended when stopped as Claude Code stops one."""

    by: str  # SIGINT, SIGTERM or SIGKILL: the signal after which it was gone
    exit_code: int | None
    seconds: float  # from the first signal to its exit


class StdioServer:
    def __init__(self, sb: Sandbox, env: dict[str, str] | None = None) -> None:
        self.stderr_path = Path(tempfile.mkstemp(prefix="aexp-server-", suffix=".log")[1])
        with open(self.stderr_path, "wb") as stderr:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                [sys.executable, "-m", "aexp_relay_mcp", "serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, **sb.env(), **(env or {})},
            )
        self.next_id = 0
        self.buffer = b""
        self.request("initialize", {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "adversarial", "version": "0"},
        })  # fmt: skip
        self.notify("notifications/initialized")

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        self.send({"jsonrpc": "2.0", "method": method, **({"params": params} if params else {})})

    def _line(self, deadline: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from the server")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise ProtocolViolation("server closed stdout")
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError:
            raise ProtocolViolation(f"non-JSON on stdout: {line[:200]!r}") from None
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            raise ProtocolViolation(f"not JSON-RPC: {line[:200]!r}")
        return message

    def start(self, method: str, params: dict[str, Any]) -> int:
        """Send a request without waiting for its answer; returns its id."""
        self.next_id += 1
        self.send({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        return self.next_id

    def start_call(self, tool: str, arguments: dict[str, Any]) -> int:
        return self.start("tools/call", {"name": tool, "arguments": arguments})

    def request(self, method: str, params: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        rid = self.start(method, params)
        deadline = time.monotonic() + timeout
        while True:
            message = self._line(deadline)
            if message.get("id") == rid:
                if "error" in message:
                    return {"protocol_error": message["error"]}
                return dict(message["result"])

    def call(self, tool: str, arguments: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        """The tool's answer: structured content, or the parsed JSON error object."""
        result = self.request("tools/call", {"name": tool, "arguments": arguments}, timeout)
        if "protocol_error" in result:
            return {"kind": "protocol_error", **result["protocol_error"]}
        if result.get("isError"):
            text = result["content"][0]["text"]
            data = json.loads(text)
            assert isinstance(data, dict) and "Traceback" not in text
            return {"is_error": True, **data}
        return {"is_error": False, **result["structuredContent"]}

    def stop_like_claude_code(self) -> Stopped:
        """SIGINT, then SIGTERM 100 ms later, then SIGKILL 400 ms after that: what Claude
        Code (2.1.332) does on exit and on /mcp reconnect."""
        started = time.monotonic()
        for sig, wait_s in ((signal.SIGINT, 0.1), (signal.SIGTERM, 0.4), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                code = self.proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
            return Stopped(sig.name, code, time.monotonic() - started)
        raise AssertionError("the server outlived SIGKILL")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            self.stderr_path.unlink()
