"""Trust gate and LLM client benchmarks, against floors measured in the same run.

    python bench/bench_trust_llm.py [--n 500] [--local 5]

1. ``trust.check`` through the socket (audited: one SQLite transaction per
   decision) for an agent with local scores and one whose AXIS answer is
   cached, and ``axis.verify`` (an AXIS round trip + cache write), against
   ``ping`` on the same connection (the socket floor), interleaved.
2. ``llm.complete`` through the daemon against an instant OpenAI-compatible
   fake on 127.0.0.1, against a direct HTTP POST to the same fake (floor).
3. With the local-llm extra: the embedded SmolLM2 server's first answer
   (includes starting it) and steady answers, with output tokens/s.

No assertions: this prints numbers. Machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from benchlib import Daemon, interleaved, line, ms_line, pct, section

from naosctl.client import Client
from naosd.broker.llm.local import find_model, server_installed

ANSWER = json.dumps({"model": "fake", "choices": [{"message": {"content": "ok"}}],
                     "usage": {"prompt_tokens": 5, "completion_tokens": 1}}).encode()
AXIS = json.dumps({"auid": "agt-1", "t_score": 900, "c_score": 950}).encode()


class Fake(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else delayed ACKs add ~40 ms per keep-alive answer

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._send(ANSWER)

    def do_GET(self) -> None:
        self._send(AXIS)

    def log_message(self, *args: object) -> None:
        pass


def serve() -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


def start(base: Path, settings: str) -> Daemon:
    conf = base / "xdg-config" / "naos"
    conf.mkdir(parents=True)
    (conf / "naosd.toml").write_text(settings)
    return Daemon(base)


def bench_trust(c: Client, n: int) -> None:
    section("1. trust gate through the socket (us)")
    c.call("axis.register", agent="local", t_score=700, c_score=800)
    c.call("axis.register", agent="remote", auid="agt-1")
    c.call("trust.check", agent="remote", cost_micro=0)  # fills the cache
    got = interleaved({
        "ping (floor)": lambda: c.call("ping"),
        "trust.check, local scores": lambda: c.call("trust.check", agent="local",
                                                    cost_micro=10),
        "trust.check, cached AXIS answer": lambda: c.call("trust.check", agent="remote",
                                                          cost_micro=10),
        "axis.verify (AXIS round trip)": lambda: c.call("axis.verify", auid="agt-1"),
    }, n)
    floor = pct(got["ping (floor)"], 0.5)
    for name, samples in got.items():
        print(line(name, samples, floor))


def bench_llm(c: Client, url: str, n: int) -> None:
    section("2. llm.complete against an instant fake (us)")
    body = json.dumps({"model": "fake", "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 8}).encode()

    def direct() -> None:
        req = urllib.request.Request(f"{url}/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    got = interleaved({"direct POST to the fake (floor)": direct,
                       "llm.complete via naosd": lambda: c.call("llm.complete", prompt="hi",
                                                                max_tokens=8)}, n)
    floor = pct(got["direct POST to the fake (floor)"], 0.5)
    for name, samples in got.items():
        print(line(name, samples, floor))


def bench_local(base: Path, n: int) -> None:
    section("3. embedded local LLM (SmolLM2-135M, llama.cpp server)")
    if not server_installed() or find_model() is None:
        print("skipped: the local-llm extra is not installed")
        return
    d = start(base, "")
    try:
        with Client(d.sock, timeout=300) as c:
            t0 = time.perf_counter()
            c.call("llm.complete", prompt="Say hello.", max_tokens=16)
            print(ms_line("first answer (starts the server)",
                          [(time.perf_counter() - t0) * 1e3]))
            samples, rates = [], []
            for _ in range(n):
                t0 = time.perf_counter()
                r = c.call("llm.complete", prompt="Name three colours.", max_tokens=32)
                took = time.perf_counter() - t0
                samples.append(took * 1e3)
                rates.append(r["output_tokens"] / took)
            print(ms_line("answer, max 32 tokens", samples))
            print(f"{'output tokens/s (upper-bound counts, streamed)':<48} "
                  f"p50 {pct(rates, 0.5):7.1f}")
    finally:
        print(f"stop: {d.stop()}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--local", type=int, default=5)
    args = ap.parse_args()
    fake, url = serve()
    with tempfile.TemporaryDirectory(prefix="naos-b", dir="/tmp") as tmp:
        settings = (f'[llm]\nbase_url = "{url}"\nmodel = "fake"\n'
                    f'[axis]\nbase_url = "{url}"\ncache_ttl = 3600.0\n')
        d = start(Path(tmp) / "a", settings)
        try:
            with Client(d.sock, timeout=60) as c:
                bench_trust(c, args.n)
                bench_llm(c, url, args.n)
        finally:
            print(f"stop: {d.stop()}")
        bench_local(Path(tmp) / "b", args.local)
    fake.shutdown()


if __name__ == "__main__":
    main()
