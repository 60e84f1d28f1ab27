"""The agent API (``ctx``) against floors measured in the same run.

    python bench/bench_agent_api.py [--n 500] [--messages 160] [--llm-delay-ms 50]
                                    [--synchronous full|normal]

A real naosd whose LLM is the tests' OpenAI-compatible server
(tests/fake_openai.py) on 127.0.0.1, in this process; agents are real
handler processes and time their own ``ctx`` calls (``time.perf_counter``
in the handler, so the figure is what agent code waits for).

1. ``ctx.ask`` round trip from one agent to an echo agent, against the raw
   Thespian floor (an external ``ActorSystem.ask`` to an echo actor,
   multiprocTCPBase, in a subprocess) and against ``agent.run`` from the
   client library.
2. ``ctx.llm.chat`` against calling the same server directly (http.client,
   one kept-alive connection, the same body): the p50 added by the trust
   gate, the reservation, settle, the ledger row and the audit row.
   Blocks of each are interleaved.
3. ``ctx.state``: a set and a get inside the handler (local; changes ride on
   the reply), and what committing a change adds to an ``agent.run``.
4. Throughput of LLM-bound messages (the server answers after
   ``--llm-delay-ms``): one async agent with ``max_concurrency = 8`` against
   eight agents of concurrency 1 and against one agent of concurrency 1.

``--synchronous normal`` runs naosd with ``storage.synchronous = normal`` (no
fsync per commit) to show how much of each figure is the disk.

No assertions: this prints numbers.  Machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import Daemon, interleaved, line, pct, raw_thespian, section

from naosctl.client import Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fake_openai import FakeOpenAI, answer, fake_openai_in_thread  # the tests' server

CALLERS = ("asker", "chatter", "fan")
ECHO = "def handle(message, ctx):\n    return message\n"
WRITER = "def handle(message, ctx):\n    ctx.state['n'] = message\n    return message\n"
TIMED = '''
import asyncio, time

HI = [{"role": "user", "content": "hi"}]


def us(t0):
    return (time.perf_counter() - t0) * 1e6


async def handle(message, ctx):
    op, n, out = message["op"], message["n"], []
    for i in range(n):
        t0 = time.perf_counter()
        if op == "ask":
            await ctx.ask("echo", {"i": i})
        elif op == "chat":
            await ctx.llm.chat(HI, max_tokens=16)
        elif op == "budget":
            await ctx.budget()
        elif op == "state_set":
            ctx.state["k"] = i
        elif op == "state_get":
            ctx.state.get("k")
        out.append(us(t0))
    return out
'''
FAN = '''
import asyncio, time


async def handle(message, ctx):
    targets, m = message["targets"], message["m"]
    t0 = time.perf_counter()
    await asyncio.gather(*(ctx.ask(targets[i % len(targets)], {"i": i}) for i in range(m)))
    return time.perf_counter() - t0
'''
LLM_BOUND = '''
async def handle(message, ctx):
    r = await ctx.llm.chat([{"role": "user", "content": "classify"}], max_tokens=8)
    return r.text
'''


def create(c: Client, base: Path, name: str, code: str, **extra: Any) -> None:
    source = base / f"{name}.py"
    source.write_text(code)
    c.call("agent.create", name=name, source=str(source), start=True, timeout=120, **extra)


def in_agent(c: Client, name: str, op: str, n: int) -> list[float]:
    samples: list[float] = c.call("agent.run", name=name, input={"op": op, "n": n},
                                  timeout=600)["output"]
    return samples


def ask_phase(c: Client, n: int, floor: list[float]) -> None:
    fp50 = pct(floor, 0.5)
    print(line("raw Thespian ask round trip (floor)", floor))
    in_agent(c, "asker", "ask", 50)  # warm
    asks = in_agent(c, "asker", "ask", n)
    print(line("ctx.ask to an echo agent (in the handler)", asks, fp50))
    runs = interleaved({"agent.run echo agent (client library)":
                        lambda: c.call("agent.run", name="echo", input=1)}, n)
    for name, samples in runs.items():
        print(line(name, samples, fp50))


def direct_chat(fake: FakeOpenAI) -> Any:
    host, port = fake.url.split("//", 1)[1].split("/", 1)[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    body = json.dumps({"model": "fake-1", "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 16}).encode()

    def call() -> None:
        conn.request("POST", "/v1/chat/completions", body,
                     {"Content-Type": "application/json"})
        conn.getresponse().read()

    return call


def chat_phase(c: Client, fake: FakeOpenAI, n: int) -> None:
    call = direct_chat(fake)
    for _ in range(50):
        call()
    in_agent(c, "chatter", "chat", 50)
    via_ctx: list[float] = []
    direct: list[float] = []
    hops: list[float] = []
    rounds = 5
    for _ in range(rounds):  # blocks interleaved: drifting load hits them alike
        via_ctx += in_agent(c, "chatter", "chat", n // rounds)
        hops += in_agent(c, "chatter", "budget", n // rounds)
        for _ in range(n // rounds):
            t0 = time.perf_counter()
            call()
            direct.append((time.perf_counter() - t0) * 1e6)
    print(line("direct POST to the same server (floor)", direct))
    print(line("ctx.llm.chat (in the handler)", via_ctx, pct(direct, 0.5)))
    print(line("ctx.budget() (one channel round trip, no I/O)", hops, pct(direct, 0.5)))
    added = (pct(via_ctx, 0.5) - pct(direct, 0.5)) / 1e3
    print(f"  ctx.llm.chat adds {added:.2f} ms at p50 (a channel round trip, the trust gate's"
          " read, reservation, settle, the fsynced ledger + audit commit)")


def state_phase(c: Client, n: int) -> None:
    sets = in_agent(c, "asker", "state_set", n)
    gets = in_agent(c, "asker", "state_get", n)
    print(line("ctx.state[k] = v (in the handler)", sets))
    print(line("ctx.state.get(k) (in the handler)", gets))
    counter = iter(range(1 << 62))
    runs = interleaved({
        "agent.run, handler changes no state": lambda: c.call("agent.run", name="echo",
                                                                input=1),
        "agent.run, handler sets one key": lambda: c.call("agent.run", name="writer",
                                                           input=next(counter)),
    }, n)
    base = pct(runs["agent.run, handler changes no state"], 0.5)
    for name, samples in runs.items():
        print(line(name, samples, base))
    print("  (a change is committed with the reply in naosd's group commit)")


def throughput_phase(c: Client, base: Path, fake: FakeOpenAI, m: int, delay_ms: float
                     ) -> None:
    fake.answer = lambda body: _delayed(delay_ms)
    create(c, base, "c8", LLM_BOUND, max_concurrency=8)
    create(c, base, "c1", LLM_BOUND)
    singles = [f"s{i}" for i in range(8)]
    for name in singles:
        create(c, base, name, LLM_BOUND)
    cases = {"one agent, max_concurrency = 8": (["c8"], m),
             "eight agents, max_concurrency = 1 each": (singles, m),
             "one agent, max_concurrency = 1 (floor)": (["c1"], max(8, m // 8))}
    rates: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(3):
        for name, (targets, count) in cases.items():
            took = c.call("agent.run", name="fan", input={"targets": targets, "m": count},
                          timeout=600)["output"]
            rates[name].append(count / took)
    floor = pct(rates["one agent, max_concurrency = 1 (floor)"], 0.5)
    for name, samples in rates.items():
        best = pct(samples, 0.5)
        print(f"{name:<48} {best:8.1f} msg/s  {best / floor:6.2f}x floor  "
              f"(median of {len(samples)})")
    print(f"  (each message is one ctx.llm.chat the server answers after {delay_ms:g} ms;"
          f" ideal: {1000 / delay_ms:.0f} msg/s per slot; most in flight at the server"
          f" {fake.most_in_flight})")


def _delayed(delay_ms: float) -> Any:
    step = answer("billing", usage=(12, 2))
    step.delay_s = delay_ms / 1000
    return step


def setup(c: Client, base: Path) -> None:
    for agent in (*CALLERS, "c8", "c1", *(f"s{i}" for i in range(8))):
        c.call("axis.register", agent=agent, t_score=650, c_score=800)
    c.call("cost.set", scope="*", budget="$1000/day")
    create(c, base, "echo", ECHO)
    create(c, base, "writer", WRITER)
    create(c, base, "asker", TIMED)
    create(c, base, "chatter", TIMED)
    create(c, base, "fan", FAN)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500, help="calls per figure")
    ap.add_argument("--messages", type=int, default=160, help="messages per throughput run")
    ap.add_argument("--llm-delay-ms", type=float, default=50.0)
    ap.add_argument("--synchronous", choices=("full", "normal"), default="full",
                    help="naosd's storage.synchronous (full is the default)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="naos-bench-", dir="/tmp"))
    daemon: Daemon | None = None
    print(f"naos agent API benchmarks (n={args.n}, storage.synchronous={args.synchronous},"
          f" {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f})")
    try:
        floor = raw_thespian(args.n)
        with fake_openai_in_thread() as fake:
            daemon = Daemon(base, {"NAOS_LLM_BASE_URL": fake.url, "NAOS_LLM_MODEL": "fake-1",
                                   "NAOS_LLM_PRICE_INPUT_PER_1K": "1000",
                                   "NAOS_LLM_PRICE_OUTPUT_PER_1K": "20000",
                                   "NAOS_STORAGE_SYNCHRONOUS": args.synchronous})
            with Client(daemon.sock, timeout=900) as c:
                setup(c, base)
                section("1. ctx.ask round trip")
                ask_phase(c, args.n, floor)
                section("2. ctx.llm.chat overhead")
                chat_phase(c, fake, args.n)
                section("3. ctx.state")
                state_phase(c, args.n)
                section("4. throughput of LLM-bound messages")
                throughput_phase(c, base, fake, args.messages, args.llm_delay_ms)
    finally:
        if daemon is not None:
            took, rc, left = daemon.stop()
            print(f"\nSIGTERM -> naosd exited {rc} in {took:.2f} s; leftovers: {left}")
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
