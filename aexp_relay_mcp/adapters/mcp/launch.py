"""How to start this installation's server: the console script beside this interpreter
(by absolute path: MCP clients start servers without your shell's PATH set-up, and
pipx's ~/.local/bin is often missing there), else whatever ``aexp-relay-mcp`` resolves
to on PATH, else ``python -m aexp_relay_mcp``."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def server_command(*, search_path: bool = True) -> tuple[str, list[str]]:
    """``(command, args)`` that serves MCP over stdio with this installation.

    ``search_path=False`` never uses PATH: the selftest must test this installation,
    never whichever ``aexp-relay-mcp`` happens to be first on PATH."""
    beside = Path(sys.executable).parent / "aexp-relay-mcp"
    if beside.exists():
        return str(beside), ["serve"]
    found = shutil.which("aexp-relay-mcp") if search_path else None
    if found:
        return str(Path(found).resolve()), ["serve"]
    return sys.executable, ["-m", "aexp_relay_mcp", "serve"]
