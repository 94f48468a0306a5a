"""aexp-relay-mcp: a fixed whitelist of git and wandb ops on an HPC login node, over ssh."""

from __future__ import annotations

from .client import RelayClient
from .config import RelayConfig
from .errors import (
    ConsentRequiredError,
    RelayCancelledError,
    RelayDownError,
    RelayError,
    RelayTimeoutError,
    RelayValidationError,
    RemoteCommandError,
)
from .ops import OPS, validate_request

__version__ = "0.1.0"

__all__ = [
    "OPS",
    "ConsentRequiredError",
    "RelayCancelledError",
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
