"""The error tree. Every message says what happened and what to do next.

Hints are written once, with ``{op:NAME}`` (the next operation to run), ``{arg:NAME}``,
``{set:NAME}`` and ``{args:A,B,...}`` placeholders. Each adapter (a ``Surface``) renders
them in its own words: the library says ``rebase``, the MCP server ``airgapped_rebase``,
the CLI ``aexp-relay-mcp rebase``. The error tree knows no op: whoever raises an error
about an op's arguments (the registry) writes their names into ``{args:...}``.

| error                  | kind(s)                                   | nothing ran? |
|------------------------|-------------------------------------------|--------------|
| RelayValidationError   | invalid_request                           | yes          |
| ConsentError           | consent_required, consent_declined, ...   | nothing uploaded |
| RelayDownError         | connection_refused, auth_failed, ...      | did not finish |
| RelayTimeoutError      | timeout                                   | bounded on both sides |
| RemoteCommandError     | not_a_repo, diverged, conflict, ...       | it ran and failed |
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .budget import fit_data

_PLACEHOLDER = re.compile(r"\{(op|arg|set):([a-z_]+)\}|\{args:([a-z_,]*)\}")


@dataclass(frozen=True)
class Surface:
    """How one adapter names things: the library says ``push`` and ``ssh_host``, the MCP
    server ``airgapped_push`` and ``ssh_host``, the CLI ``aexp-relay-mcp push`` and
    ``--host``. ``subject`` is the JSON key that names the op an error belongs to."""

    name: str  # library, mcp, cli (recorded in the audit log)
    subject: str  # op, tool, command
    op_label: Callable[[str], str]
    arg_label: Callable[[str], str]
    flag_on: Callable[[str], str] = lambda arg: f"{arg}=true"  # a boolean argument, set

    def render(self, template: str) -> str:
        """Replace ``{op:NAME}``, ``{arg:NAME}``, ``{set:NAME}`` (a boolean argument,
        turned on) and ``{args:A,B,...}`` (a list of arguments) placeholders."""

        def one(match: re.Match[str]) -> str:
            what, name, names = match.group(1), match.group(2), match.group(3)
            if names is not None:
                return ", ".join(self.arg_label(a) for a in names.split(",") if a) or "none"
            if what == "op":
                return f"`{self.op_label(name)}`"
            if what == "arg":
                return f"`{self.arg_label(name)}`"
            return f"`{self.flag_on(name)}`"

        return _PLACEHOLDER.sub(one, template)


def args_placeholder(names: Iterable[str]) -> str:
    """``{args:A,B}``: a list of arguments, each named in the surface's words."""
    return "{args:" + ",".join(names) + "}"


@dataclass(frozen=True)
class Failure:
    """A classified failure before it becomes an error: its kind, what happened (message)
    and what to do next (a hint template)."""

    kind: str
    message: str
    hint: str


def _same(name: str) -> str:
    return name


LIBRARY = Surface("library", "op", _same, _same, lambda arg: f"{arg}=True")


def render_hint(template: str, surface: Surface = LIBRARY) -> str:
    return surface.render(template)


class RelayError(Exception):
    """Base class. ``kind`` is a stable machine-readable token; ``hint`` the next step.

    ``message`` is plain text (it may quote the caller's values); ``hint`` is a template
    written in this package, rendered per surface. ``op`` is the op the error belongs to.
    """

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
        op: str = "",
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
        self.op = op
        self.details = dict(details or {})

    @property
    def hint(self) -> str:
        return render_hint(self.hint_template)

    def render(self, surface: Surface = LIBRARY) -> str:
        parts = [self.message]
        if self.hint_template:
            parts.append(f"Hint: {surface.render(self.hint_template)}")
        if self.exit_code is not None:
            parts.append(f"Exit code: {self.exit_code}")
        if self.stderr_tail:
            parts.append(f"stderr (last lines):\n{self.stderr_tail}")
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.render()

    def to_dict(self, surface: Surface = LIBRARY) -> dict[str, Any]:
        """The JSON shape adapters send: kind, message, hint, and context when known."""
        data: dict[str, Any] = {"kind": self.kind}
        if self.op:
            data[surface.subject] = surface.op_label(self.op)
        data["message"] = self.message
        data["hint"] = surface.render(self.hint_template)
        if self.exit_code is not None:
            data["exit_code"] = self.exit_code
        if self.stderr_tail:
            data["stderr_tail"] = self.stderr_tail
        if self.request_id:
            data["request_id"] = self.request_id
        data.update(self.extra())
        return fit_data(data)

    def extra(self) -> dict[str, Any]:
        return dict(self.details)


class RelayValidationError(RelayError, ValueError):
    """Bad op, args, host or repo. Nothing ran."""

    default_kind = "invalid_request"


class ConsentError(RelayError):
    """A consent op did not get the user's yes. Nothing was uploaded.

    Kinds: ``consent_required`` (no approval given: ``preview`` shows what would upload),
    ``consent_declined`` (the user said no), ``consent_cancelled`` (the question was
    dismissed, or nobody could answer it), ``consent_unavailable`` (the client cannot ask).
    """

    default_kind = "consent_required"

    def __init__(self, message: str, *, preview: Any = None, hint: str = "", **kw: Any) -> None:
        super().__init__(message, hint=hint, **kw)
        self.preview = preview

    def extra(self) -> dict[str, Any]:
        if self.preview is None:
            return dict(self.details)
        dump = getattr(self.preview, "model_dump", None)
        return {**self.details, "preview": dump(mode="json") if dump else self.preview}


class ConsentRequiredError(ConsentError):
    """A consent op was asked for without approval; ``preview`` lists what would upload."""

    default_kind = "consent_required"


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
    "LIBRARY",
    "ConsentError",
    "ConsentRequiredError",
    "Failure",
    "RelayDownError",
    "RelayError",
    "RelayTimeoutError",
    "RelayValidationError",
    "RemoteCommandError",
    "Surface",
    "args_placeholder",
    "render_hint",
]
