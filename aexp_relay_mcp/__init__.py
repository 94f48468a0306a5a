"""aexp-relay-mcp: a fixed whitelist of git and wandb ops on an HPC login node, over ssh.

Public API: ``RelayClient``, ``validate_request``, ``RelayConfig``, ``OPS`` and the errors.
Attributes load lazily (PEP 562), so ``aexp-relay-mcp --help`` starts without pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_EXPORTS = {
    "RelayClient": ".client",
    "RelayConfig": ".config",
    "OPS": ".ops",
    "validate_request": ".ops",
    "ConsentRequiredError": ".errors",
    "RelayDownError": ".errors",
    "RelayError": ".errors",
    "RelayTimeoutError": ".errors",
    "RelayValidationError": ".errors",
    "RemoteCommandError": ".errors",
}

if TYPE_CHECKING:
    from .client import RelayClient
    from .config import RelayConfig
    from .errors import (
        ConsentRequiredError,
        RelayDownError,
        RelayError,
        RelayTimeoutError,
        RelayValidationError,
        RemoteCommandError,
    )
    from .ops import OPS, validate_request


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
