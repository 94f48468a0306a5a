"""aexp-relay-mcp: a fixed whitelist of git and wandb ops on an HPC login node, over ssh.

Public API: ``RelayClient``, ``validate_request``, ``RelayConfig``, ``OPS`` and the errors.
Attributes load lazily (PEP 562), so ``aexp-relay-mcp --help`` starts without pydantic.

The tree is the architecture, one layer per folder, imports pointing down only (checked
by import-linter in CI, see pyproject.toml)::

    adapters/cli       the command line (every verb, --selftest included)
    adapters/selftest  the product end to end through a real MCP stdio client
    adapters/mcp       the MCP stdio server and its seven tools
    relay/             one call's life: RelayClient, the op flows, the audit log
    sandbox/           a private login node for the selftest, tests and benchmarks
    ssh/               processes and sockets: runner, mux client, masters, transport
    remote/            pure: the remote script, quoting, the op registry, the parsers
    model/             values everyone shares: results, errors, config, targets
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .model.version import __version__

_EXPORTS = {
    "RelayClient": ".relay.client",
    "RelayConfig": ".model.config",
    "OPS": ".remote.ops",
    "validate_request": ".remote.ops",
    "ConsentRequiredError": ".model.errors",
    "RelayDownError": ".model.errors",
    "RelayError": ".model.errors",
    "RelayTimeoutError": ".model.errors",
    "RelayValidationError": ".model.errors",
    "RemoteCommandError": ".model.errors",
}

if TYPE_CHECKING:
    from .model.config import RelayConfig
    from .model.errors import (
        ConsentRequiredError,
        RelayDownError,
        RelayError,
        RelayTimeoutError,
        RelayValidationError,
        RemoteCommandError,
    )
    from .relay.client import RelayClient
    from .remote.ops import OPS, validate_request


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'aexp_relay_mcp' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


__all__ = [
    "OPS",
    "ConsentRequiredError",
    "RelayClient",
    "RelayConfig",
    "RelayDownError",
    "RelayError",
    "RelayTimeoutError",
    "RelayValidationError",
    "RemoteCommandError",
    "__version__",
    "validate_request",
]
