"""naos as an MCP client: agents use the tools of registered MCP servers
(docs/interop.md, "naos as an MCP client").

- :mod:`actors.domain.tool_servers` (pure): definitions, tool names, prices.
- :mod:`naosd.storage.tool_servers`: the registry's SQL (audited).
- :mod:`naosd.broker.tools.servers`: the registry and one supervised session
  per server; :mod:`naosd.broker.tools.supervisor`: one server's supervision
  (start, list, watch, restart with backoff, give up on a crash loop).
- :mod:`naosd.broker.tools.session` and :mod:`naosd.broker.tools.stdio`: the
  official SDK's client over a stdio process naosd owns or Streamable HTTP;
  the only client-side importers of ``mcp``, imported when a server starts.
- :mod:`naosd.broker.tools.calls`: the agent API's ``Tools``, every call
  through the spender (trust gate, price, budget, audit).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from naosd.broker.spend import Spender
    from naosd.broker.tools.calls import AgentTools
    from naosd.broker.tools.servers import ToolServers
    from naosd.config import Config
    from naosd.storage.db import AsyncStore


@dataclass(frozen=True, slots=True)
class McpClient:
    """The MCP client's two faces: the registry (control methods) and the
    agent API's ``Tools``."""

    servers: ToolServers
    calls: AgentTools


def build_mcp_client(db: AsyncStore, spender: Spender, config: Config,
                     environ: Mapping[str, str]) -> McpClient:
    """Built by the composition root; ``environ`` is naosd's environment."""
    from naosd.broker.tools.calls import AgentTools
    from naosd.broker.tools.servers import ToolServers

    private = tuple(p for p in (config.state_dir, config.audit_key_file,
                                config.llm_api_key_file, config.axis_api_key_file,
                                config.cluster_secret_file) if p is not None)
    servers = ToolServers(db, log_dir=config.state_dir / "tool-servers", environ=environ,
                          private=private)
    return McpClient(servers, AgentTools(servers, spender))
