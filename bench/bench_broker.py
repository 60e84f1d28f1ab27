"""Broker benchmarks: figures and ratios against floors measured in the same run.

    python bench/bench_broker.py [--n 1000] [--tasks 2000]

1. The floor: a raw Thespian ``ask`` round trip (multiprocTCPBase, no naos code).
2. Through a real naosd with the naosctl client library, interleaved so that load
   drift hits them alike: ``ping`` (socket + event loop), ``actors.ping`` (one
   bridge hop to the root actor), ``broker.execute`` on a built-in skill route
   (route, trust, reserve, run, settle, ledger + budget + audit in one fsynced
   transaction) for an agent registered with the trust gate, with a global and an
   agent budget set; the same without an agent (the gate then looks nothing up);
   and on the WASM route
   (examples/skills/csv-total through the sandbox pool).
3. Tasks/s pipelined: many ``broker.execute`` calls in flight at once on a few
   asyncio connections (the daemon groups nothing: every task is its own
   transaction).

No assertions: this prints numbers. Machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path

from benchlib import ROOT, Daemon, interleaved, line, pct, raw_thespian, section

from naosctl.client import AsyncClient, Client

CSV_TOTAL = ROOT / "examples" / "skills" / "csv-total"
SKILL_TASK = "total these invoices: 12.50, 30, 7.25"
WASM_TASK = "csv total: 12,30,7"


def install(c: Client) -> None:
    c.call("skill.install", manifest=(CSV_TOTAL / "manifest.json").read_bytes(),
           module=(CSV_TOTAL / "module.wasm").read_bytes())
    c.call("cost.set", scope="*", budget="$1000000/day", action="pause")
    c.call("cost.set", scope="bench", budget="$1000000/day", action="pause")
    c.call("axis.register", agent="bench", t_score=900, c_score=950)


def latencies(c: Client, n: int) -> dict[str, list[float]]:
    return interleaved({
        "ping": lambda: c.call("ping"),
        "actors.ping": lambda: c.call("actors.ping"),
        "skill": lambda: c.call("broker.execute", task=SKILL_TASK, agent="bench"),
        "skill-no-agent": lambda: c.call("broker.execute", task=SKILL_TASK),
        "wasm": lambda: c.call("broker.execute", task=WASM_TASK, agent="bench"),
    }, n)


async def pipelined(sock: Path, tasks: int, connections: int, in_flight: int) -> float:
    clients = [await AsyncClient(sock, timeout=120).connect() for _ in range(connections)]
    gate = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with gate:
            await clients[i % connections].call("broker.execute", task=SKILL_TASK,
                                                agent="bench")

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(tasks)))
        return tasks / (time.perf_counter() - t0)
    finally:
        for client in clients:
            await client.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--tasks", type=int, default=2000)
    args = ap.parse_args()
    section("1. floor")
    floor = raw_thespian(args.n)
    fp50 = pct(floor, 0.5)
    print(line("raw Thespian ask round trip (floor)", floor))
    base = Path(tempfile.mkdtemp(prefix="naos-bb-", dir="/tmp"))
    daemon = Daemon(base)
    try:
        with Client(daemon.sock) as c:
            install(c)
            section(f"2. through naosd with the client library (n={args.n} each, interleaved)")
            t = latencies(c, args.n)
            print(line("client ping (event loop only)", t["ping"], fp50))
            print(line("client actors.ping (one root actor hop)", t["actors.ping"], fp50))
            print(line("broker.execute, built-in skill route", t["skill"], fp50))
            print(line("  the same without an agent (no trust lookup)", t["skill-no-agent"],
                       fp50))
            print(line("broker.execute, WASM skill route", t["wasm"], fp50))
            stats = c.call("broker.stats", since="1h")
        section(f"3. pipelined: {args.tasks} skill tasks")
        for connections, in_flight in ((1, 1), (1, 16), (4, 32)):
            rate = asyncio.run(pipelined(daemon.sock, args.tasks, connections, in_flight))
            print(f"{connections} connection(s), {in_flight:>2} in flight: {rate:8.0f} tasks/s")
        print("\nstats after section 2:", json.dumps({k: stats[k] for k in
                                                      ("tasks", "cost_micro", "all_llm_micro",
                                                       "saved_micro")}))
    finally:
        _, _, left = daemon.stop()
        shutil.rmtree(base, ignore_errors=True)
        if left:
            print(f"leftover processes killed: {left}")


if __name__ == "__main__":
    main()
