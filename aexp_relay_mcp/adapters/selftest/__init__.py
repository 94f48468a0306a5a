"""The product end to end: ``run`` (``--selftest``), ``sweep`` (every tool through a real
MCP stdio client), ``realistic`` (a noisy login node, a bastion, several servers, signals)
and ``stdio_driver`` (a line-by-line JSON-RPC driver that can also signal the server)."""
