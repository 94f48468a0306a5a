"""The adapters over ``RelayClient``: ``cli`` (the command line, every verb), ``mcp``
(the stdio server), ``selftest`` (both end to end, through a real MCP stdio client,
against the sandbox) and ``reference`` (docs/reference.md from the registry). Only here
is the ``mcp`` SDK imported."""
