"""A stand-in for the embedded LLM server (``llm.local_command`` in tests):
takes ``python -m llama_cpp.server``'s arguments and speaks just enough of
its API.  Stdlib only; steered by files in the directory of ``--model``:

- ``starts``: one line per start is appended: ``<time.monotonic()> <pid>``;
- ``gate``: while it exists, ``GET /v1/models`` is not answered (a slow start);
- ``fail``: exit with code 3 at once, after a line on stderr (a broken install);
- ``crash``: a completion sends its headers and half a body, then the process
  kills itself with SIGSEGV (llama.cpp's AMX path did that, mid-response);
- ``slow``: a completion takes 2 s (a busy machine).

Otherwise a completion answers ``"stand-in says hi"`` with usage 11 + 5 tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

USAGE = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    folder: Path
    alias: str

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"stand-in: {format % args}\n")

    def do_GET(self) -> None:
        while (self.folder / "gate").exists():
            time.sleep(0.05)
        self._json({"object": "list", "data": [{"id": self.alias, "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if (self.folder / "crash").exists():
            self._die_mid_response()
        if (self.folder / "slow").exists():
            time.sleep(2.0)
        self._json({"id": "c1", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant",
                                             "content": "stand-in says hi"}}],
                    "usage": USAGE})

    def _json(self, doc: object) -> None:
        raw = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _die_mid_response(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        part = b'{"id": "c1", "choices": [{"message": {"content": "the se'
        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        self.wfile.flush()
        os.kill(os.getpid(), signal.SIGSEGV)


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--model", "--model_alias", "--host", "--port", "--n_ctx", "--n_threads"):
        parser.add_argument(name)
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file for the SIGSEGV
    signal.signal(signal.SIGSEGV, signal.SIG_DFL)  # even under PYTHONFAULTHANDLER
    folder = Path(args.model).parent
    with (folder / "starts").open("a") as starts:
        starts.write(f"{time.monotonic()} {os.getpid()}\n")
    if (folder / "fail").exists():
        sys.stderr.write("stand-in: cannot load the model (told to fail)\n")
        sys.exit(3)
    Handler.folder, Handler.alias = folder, args.model_alias
    ThreadingHTTPServer((args.host, int(args.port)), Handler).serve_forever()


if __name__ == "__main__":
    main()
