"""A small AXIS-compatible API for tests (a double of a REMOTE service):
``GET /v1/agents/{auid}`` -> ``{"auid", "t_score", "c_score"}``, on
127.0.0.1 in a thread, so synchronous e2e tests can point naosd at it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote


class FakeAxis:
    def __init__(self) -> None:
        self.agents: dict[str, tuple[int, int]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.fail_with: int | None = None  # answer this status to everything
        self.delay_s = 0.0  # a slow AXIS
        self.server: ThreadingHTTPServer | None = None
        self.url = ""

    def answer(self, path: str, headers: dict[str, str]) -> tuple[int, Any]:
        self.requests.append((path, headers))
        time.sleep(self.delay_s)
        if self.fail_with is not None:
            return self.fail_with, {"error": "injected"}
        prefix = "/v1/agents/"
        if not path.startswith(prefix):
            return 404, {"error": "no such endpoint"}
        auid = unquote(path[len(prefix):])
        if auid not in self.agents:
            return 404, {"error": f"unknown AUID {auid}"}
        t_score, c_score = self.agents[auid]
        return 200, {"auid": auid, "t_score": t_score, "c_score": c_score}

    def stop(self) -> None:
        """Take AXIS down: connections to its port are refused from now on."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@contextmanager
def serve_fake_axis() -> Iterator[FakeAxis]:
    fake = FakeAxis()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = fake.answer(self.path, dict(self.headers))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    fake.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{fake.server.server_address[1]}/v1"
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.stop()
        thread.join(timeout=10)
