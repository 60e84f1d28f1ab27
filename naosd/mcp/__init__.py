"""naos as an MCP server (docs/interop.md).

- :mod:`naosd.mcp.catalog` (pure): tool and resource names, schemas and the
  shape of results, as plain MCP wire data.
- :mod:`naosd.mcp.gateway`: a tool call becomes the control method the CLI
  uses (``agent.run``, ``saga.run`` + ``saga.wait``, ``broker.execute`` pinned
  to the skill), run for the MCP identity and audited.
- :mod:`naosd.mcp.methods`: the gateway as control methods (``mcp.tools``,
  ``mcp.call``, ``mcp.resources``, ``mcp.read``), which ``naosctl mcp serve``
  calls over the socket.
- :mod:`naosd.mcp.server`: the protocol itself, from the official SDK (the
  ``mcp`` extra), shared by the stdio and the Streamable HTTP transports.
  Only this module imports ``mcp``; nothing imports it unless MCP is served.
"""
