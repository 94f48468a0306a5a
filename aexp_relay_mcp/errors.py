"""The error tree. Every message says what happened and what to do next.

Hints are written once, with ``{op:NAME}`` placeholders for the next operation
to run. Each adapter renders them in its own words: the library says
``rebase``, the MCP server ``airgapped_rebase``, the CLI ``aexp-relay-mcp rebase``.

| error                  | kind(s)                                   | nothing ran? |
|------------------------|-------------------------------------------|--------------|
| RelayValidationError   | invalid_request                           | yes          |
| ConsentRequiredError   | consent_required                          | nothing uploaded |
| RelayDownError         | connection_refused, auth_failed, ...      | did not finish |
| RelayTimeoutError      | timeout                                   | bounded on both sides |
| RemoteCommandError     | not_a_repo, diverged, conflict, ...       | it ran and failed |
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_OP_PLACEHOLDER = re.compile(r"\{op:([a-z_]+)\}")

OpNamer = Callable[[str], str]


def plain_op_name(op: str) -> str:
    return f"`{op}`"


def render_hint(template: str, namer: OpNamer = plain_op_name) -> str:
    """Replace ``{op:NAME}`` placeholders with what the caller's surface calls NAME."""
    return _OP_PLACEHOLDER.sub(lambda m: namer(m.group(1)), template)


class RelayError(Exception):
    """Base class. ``kind`` is a stable machine-readable token; ``hint`` the next step."""

    default_kind = "relay_error"

    def __init__(
        self,
        message: str,
        *,
        kind: str | None = None,
        hint: str = "",
        exit_code: int | None = None,
        stderr_tail: str = "",
        command: str = "",
        request_id: str = "",
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind or self.default_kind
        self.hint_template = hint
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
        self.command = command
        self.request_id = request_id
        self.details = dict(details or {})

    @property
    def hint(self) -> str:
        return render_hint(self.hint_template)

    def render(self, namer: OpNamer = plain_op_name) -> str:
        parts = [self.message]
        if self.hint_template:
            parts.append(f"Hint: {render_hint(self.hint_template, namer)}")
        if self.exit_code is not None:
            parts.append(f"Exit code: {self.exit_code}")
        if self.stderr_tail:
            parts.append(f"stderr (last lines):\n{self.stderr_tail}")
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.render()

    def to_dict(self, namer: OpNamer = plain_op_name) -> dict[str, Any]:
        """The JSON shape adapters send: kind, message, hint, and context when known."""
        data: dict[str, Any] = {
            "kind": self.kind,
            "message": self.message,
            "hint": render_hint(self.hint_template, namer),
        }
        if self.exit_code is not None:
            data["exit_code"] = self.exit_code
        if self.stderr_tail:
            data["stderr_tail"] = self.stderr_tail
        if self.request_id:
            data["request_id"] = self.request_id
        data.update(self.extra())
        return data

    def extra(self) -> dict[str, Any]:
        return dict(self.details)


class RelayValidationError(RelayError, ValueError):
    """Bad op, args, host or repo. Nothing ran."""

    default_kind = "invalid_request"


class ConsentRequiredError(RelayError):
    """A consent op was asked for without approval. Nothing was uploaded."""

    default_kind = "consent_required"

    def __init__(self, message: str, *, preview: Any, hint: str = "", **kw: Any) -> None:
        super().__init__(message, hint=hint, **kw)
        self.preview = preview

    def extra(self) -> dict[str, Any]:
        dump = getattr(self.preview, "model_dump", None)
        return {**self.details, "preview": dump(mode="json") if dump else self.preview}


class RelayDownError(RelayError):
    """ssh could not reach or authenticate to the host; the remote command never ran to the end."""

    default_kind = "unreachable"


class RelayTimeoutError(RelayError, TimeoutError):
    """The call ran past its timeout. The local process group was killed; the remote
    command is bounded by the same timeout on the login node."""

    default_kind = "timeout"


class RemoteCommandError(RelayError):
    """The command ran on the login node and failed."""

    default_kind = "command_failed"


__all__ = [
    "ConsentRequiredError",
    "RelayDownError",
    "RelayError",
    "RelayTimeoutError",
    "RelayValidationError",
    "RemoteCommandError",
    "render_hint",
]
