"""Drive the real server over stdio with the SDK's real client."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.types import CallToolResult

from aexp_relay_mcp.sandbox import Sandbox
from aexp_relay_mcp.ssh.procs import process_table

SERVER_ARGS = ["-m", "aexp_relay_mcp", "serve"]


@asynccontextmanager
async def mcp_session(
    sb: Sandbox, env: dict[str, str] | None = None, **session_kw: Any
) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=sys.executable, args=SERVER_ARGS, env={**sb.env(), **(env or {})}
    )
    async with (
        stdio_client(params) as (read, write),
        ClientSession(read, write, read_timeout_seconds=60, **session_kw) as session,
    ):
        await session.initialize()
        yield session


def data(result: CallToolResult) -> dict[str, Any]:
    """The structured result, or the JSON error object."""
    if not result.is_error:
        assert result.structured_content is not None
        # The text block carries the same JSON, for clients that read only text.
        assert json.loads(result.content[0].text) == result.structured_content  # type: ignore[union-attr]
        return dict(result.structured_content)
    text = result.content[0].text  # type: ignore[union-attr]
    parsed = json.loads(text)  # an error is exactly one JSON object
    assert isinstance(parsed, dict)
    assert "Traceback" not in text
    return parsed


def server_pids() -> list[int]:
    """Our own children that are the relay server."""
    return [
        p.pid
        for p in process_table()
        if p.ppid == os.getpid() and p.state != "Z" and "aexp_relay_mcp serve" in p.cmdline
    ]
