"""Real MCP servers for the MCP client's tests, written with the official SDK's
server side (``MCPServer``): a stdio one (a script the test writes and naosd
starts) and a Streamable HTTP one on 127.0.0.1 behind a bearer token (a
subprocess the test starts and stops)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# Tools: add, echo, whoami (its pid), fail (an isError answer), slow, shaped (a
# backtracking pattern in its inputSchema), grow (adds `mul`
# and says the tool list changed), files.read (a dotted name), count (how many
# calls reached the server). Every call is appended to $CALLS_FILE first.
# With $BROKEN_FLAG naming a file that exists, the server exits 3 at once.
SERVER = '''
import json, os, sys

flag = os.environ.get("BROKEN_FLAG")
if flag and os.path.exists(flag):
    sys.exit(3)

from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

app = MCPServer("calc")
CALLS = os.environ.get("CALLS_FILE")


def note(tool, args):
    if CALLS:
        with open(CALLS, "a") as fh:
            fh.write(json.dumps({"tool": tool, "args": args}) + "\\n")


@app.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    note("add", {"a": a, "b": b})
    return a + b


@app.tool()
def echo(text: str) -> str:
    """Say it back."""
    note("echo", {"text": text})
    return text


@app.tool()
def whoami() -> int:
    """The server's pid."""
    note("whoami", {})
    return os.getpid()


@app.tool()
def fail(why: str) -> str:
    """Always fails, saying why."""
    note("fail", {"why": why})
    raise ToolError(f"refused: {why}")


@app.tool()
async def slow(seconds: float) -> str:
    """Answers after a while."""
    import anyio

    note("slow", {"seconds": seconds})
    await anyio.sleep(seconds)
    return "done"


@app.tool()
def shaped(s: Annotated[str, Field(pattern=r"^(a+)+$")]) -> str:
    """Its inputSchema's pattern backtracks for a long time on aaa...a!"""
    return s


@app.tool(name="files.read")
def files_read(path: str) -> str:
    """A tool whose name has a dot."""
    note("files.read", {"path": path})
    return f"contents of {path}"


@app.tool()
async def grow(ctx: Context) -> str:
    """Adds the tool mul and says the tool list changed."""
    note("grow", {})

    def mul(a: int, b: int) -> int:
        """Multiply two integers."""
        return a * b

    app.add_tool(mul, name="mul")
    await ctx.notify_tools_changed()
    return "grown"


if os.environ.get("HTTP_PORT"):
    import uvicorn

    token = os.environ["HTTP_TOKEN"].encode()
    inner = app.streamable_http_app(stateless_http=True, json_response=True)

    async def guarded(scope, receive, send):
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") \\
                != b"Bearer " + token:
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"bad token"})
            return
        await inner(scope, receive, send)

    uvicorn.run(guarded, host="127.0.0.1", port=int(os.environ["HTTP_PORT"]),
                log_level="warning")
else:
    app.run("stdio")
'''


def write_server(base: Path) -> Path:
    script = base / "calc_server.py"
    script.write_text(SERVER)
    return script


def stdio_command(script: Path) -> str:
    return f"{sys.executable} {script}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class HttpServer:
    proc: subprocess.Popen[bytes]
    port: int
    token: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def start_http_server(script: Path, token: str, log: Path, *, port: int | None = None,
                      calls: Path | None = None) -> HttpServer:
    """The server of ``script`` on Streamable HTTP; returns once it answers."""
    port = port or free_port()
    env = {**os.environ, "HTTP_PORT": str(port), "HTTP_TOKEN": token}
    if calls is not None:
        env["CALLS_FILE"] = str(calls)
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = HttpServer(proc, port, token)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the HTTP MCP server exited: {log.read_text()}")
        try:
            urllib.request.urlopen(server.url, timeout=2)
        except urllib.error.HTTPError:
            return server  # it answers (401 without the token)
        except OSError:
            time.sleep(0.1)
            continue
        return server
    server.stop()
    raise AssertionError(f"the HTTP MCP server did not answer: {log.read_text()}")
