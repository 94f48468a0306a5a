"""A small synchronous JSON-RPC client for the real server over stdio.

The SDK's client is async; hypothesis drives synchronous tests, so the property tests
speak the protocol directly. It is strict: every line on stdout must be JSON-RPC.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from typing import Any

from aexp_relay_mcp.sandbox import Sandbox


class ProtocolViolation(AssertionError):
    pass


class StdioServer:
    def __init__(self, sb: Sandbox, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aexp_relay_mcp", "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
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

    def request(self, method: str, params: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        self.next_id += 1
        rid = self.next_id
        self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
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

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
