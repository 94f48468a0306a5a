"""The MCP adapter: ``server`` (the stdio server and its seven tool functions),
``tools`` (names, schemas, annotations, result shapes), ``consent`` (elicitation for
uploads) and ``launch`` (how to start this installation's server)."""
