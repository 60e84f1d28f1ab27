"""Tool calls through naos's MCP client against the floor measured in the same
run (needs the mcp extra).

    python bench/bench_mcp_client.py [--n 200]

One stdio MCP server written with the SDK (tests/mcp_tool_servers.py, its
``add`` tool), registered in a real naosd; each round calls it three ways,
interleaved:

1. the SDK's own client on its own server process (the floor: MCP framing,
   pydantic, the pipe, the server);
2. ``toolserver.call`` over the socket as the operator (the client library:
   the control call, name resolution, the schema check in a thread, the trust
   gate, the reservation, the call over naosd's session, the ledger row and
   the ``tool.call`` audit row with their fsync);
3. the same as a registered agent (the trust gate reads its registration).

Also the time from ``mcp add`` to ``up`` (naosd imports the SDK, the server
starts and is listed) and from a SIGKILL of the server to the next answer.
No assertions: this prints numbers.  Machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench_mcp import interleaved
from benchlib import Daemon, line, ms_line, pct, section

from naosctl.client import AsyncClient, Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from mcp_tool_servers import write_server  # the tests' server script


def wait_up(c: Client, name: str) -> dict[str, object]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = c.call("toolserver.list", name=name)["servers"][0]
        if found["state"] == "up":
            return dict(found)
        time.sleep(0.01)
    raise SystemExit(f"{name} never came up")


async def calls(d: Daemon, script: Path, n: int) -> None:
    from mcp import Client as McpClient
    from mcp.client.stdio import StdioServerParameters

    args = {"a": 2, "b": 3}
    params = StdioServerParameters(command=sys.executable, args=[str(script)])
    async with McpClient(params, cache=None) as raw, AsyncClient(d.sock) as c:
        section(f"calling add, n={n} each, interleaved (us)")
        got = await interleaved({
            "SDK client, its own server (floor)": lambda: raw.call_tool("add", args),
            "toolserver.call, as the operator": lambda: c.call(
                "toolserver.call", tool="calc.add", args=args),
            "toolserver.call, as a registered agent": lambda: c.call(
                "toolserver.call", tool="calc.add", args=args, agent="bench"),
        }, n)
    floor = pct(got["SDK client, its own server (floor)"], 0.5)
    for name, samples in got.items():
        print(line(name, samples, floor))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="naos-", dir="/tmp") as tmp:
        d = Daemon(Path(tmp))
        try:
            script = write_server(Path(tmp))
            with Client(d.sock) as c:
                c.call("axis.register", agent="bench", t_score=800, c_score=800)
                section("start")
                t0 = time.perf_counter()
                c.call("toolserver.add", name="calc", command=[sys.executable, str(script)],
                       cwd=tmp)
                pid = wait_up(c, "calc")["pid"]
                print(ms_line("mcp add -> up (SDK import, spawn, handshake, list)",
                              [(time.perf_counter() - t0) * 1e3]))
                asyncio.run(calls(d, script, opts.n))
                section("SIGKILL of the server -> seen -> the next call answered")
                t0 = time.perf_counter()
                os.kill(int(str(pid)), signal.SIGKILL)
                while c.call("toolserver.list", name="calc")["servers"][0]["crashes"] == 0:
                    time.sleep(0.001)
                seen = time.perf_counter()
                c.call("toolserver.call", tool="calc.add", args={"a": 1, "b": 1})
                print(ms_line("kill -> exit seen by naosd", [(seen - t0) * 1e3]))
                print(ms_line("kill -> answered (1 s backoff, spawn, handshake, list)",
                              [(time.perf_counter() - t0) * 1e3]))
        finally:
            print(f"stop: {d.stop()}")


if __name__ == "__main__":
    main()
