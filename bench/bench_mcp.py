"""MCP tool calls against the floor measured in the same run (needs the mcp extra).

    python bench/bench_mcp.py [--n 200]

One ``echo`` template agent; each round calls it four ways, interleaved:

1. ``agent.run`` with the asyncio client library (the floor: what naosctl does);
2. ``mcp.call`` over the socket (the gateway: the agent lookup, the run, the
   ``mcp.call`` audit row with its fsync);
3. the SDK's client over stdio (``naosctl mcp serve``: MCP framing and pydantic
   on both sides, then 2.);
4. the SDK's client over Streamable HTTP (``/mcp``: HTTP, the ASGI bridge, the
   SDK's stateless transport, then the gateway in process).

Also the first ``/mcp`` request (it imports the SDK in naosd).  No assertions:
this prints numbers.  Machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from benchlib import Daemon, line, ms_line, pct, section

from naosctl.client import AsyncClient, Client


async def interleaved(fns: dict[str, Callable[[], Awaitable[object]]], n: int,
                      warmup: int = 10) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + n):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            await fn()
            if i >= warmup:
                out[name].append((time.perf_counter() - t0) * 1e6)
    return out


async def run(d: Daemon, url: str, token: str, n: int) -> None:
    import httpx2
    from mcp import Client as McpClient
    from mcp.client.stdio import StdioServerParameters
    from mcp.client.streamable_http import streamable_http_client

    section("first /mcp request (naosd imports the SDK)")
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as web:
        t0 = time.perf_counter()
        async with McpClient(streamable_http_client(url, http_client=web)) as h:
            await h.list_tools()
            print(ms_line("connect + tools/list", [(time.perf_counter() - t0) * 1e3]))
            params = StdioServerParameters(
                command=sys.executable, args=["-m", "naosctl", "--socket", str(d.sock), "mcp",
                                              "serve"])
            async with McpClient(params) as s, AsyncClient(d.sock) as c:
                section(f"calling the echo agent, n={n} each, interleaved (us)")
                got = await interleaved({
                    "agent.run, client library (floor)":
                        lambda: c.call("agent.run", name="echo", input={"a": 1}),
                    "mcp.call over the socket (the gateway)":
                        lambda: c.call("mcp.call", tool="agent_echo", arguments={"a": 1}),
                    "MCP over stdio (naosctl mcp serve)":
                        lambda: s.call_tool("agent_echo", {"a": 1}),
                    "MCP over Streamable HTTP (/mcp)":
                        lambda: h.call_tool("agent_echo", {"a": 1}),
                }, n)
    floor = pct(got["agent.run, client library (floor)"], 0.5)
    for name, samples in got.items():
        print(line(name, samples, floor))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="naos-", dir="/tmp") as tmp:
        d = Daemon(Path(tmp))
        try:
            with Client(d.sock) as c:
                c.call("agent.create", name="echo", template="echo", start=True)
                info = c.call("dashboard.url")
            token = info["login_url"].split("token=", 1)[1]
            asyncio.run(run(d, info["url"] + "mcp", token, args.n))
        finally:
            print(f"stop: {d.stop()}")


if __name__ == "__main__":
    main()
