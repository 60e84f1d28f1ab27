"""naosctl cluster: the nodes of a convention and where agents run."""

from __future__ import annotations

import click

from naosctl import render
from naosctl.main import Ctx, cli, handle_errors, json_option, pass_ctx


@cli.group()
def cluster() -> None:
    """Cluster mode (docs/cluster.md)."""


@cluster.command("nodes")
@json_option
@pass_ctx
@handle_errors()
def cluster_nodes(c: Ctx, as_json: bool) -> None:
    """Nodes (name, address, capabilities, last heartbeat, state) and agents."""
    result = c.client.call("cluster.nodes")
    click.echo(render.to_json(result) if as_json else render.cluster(result))
