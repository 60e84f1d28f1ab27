"""Cluster mode benchmarks: a leader on 127.0.0.2 and a member on 127.0.0.3
(one machine, loopback aliases), figures and ratios against baselines
measured in the same run.

    python bench/bench_cluster.py [--n 300] [--losses 3] [--heartbeat 0.2] [--lost-after 5]

1. ``agent.run`` on an echo agent running on the leader (baseline) and on
   one placed on the member, interleaved: the cost of the extra node hop.
2. ``agent.create start=true``: placed locally vs placed on the member.
3. Member loss: SIGKILL the member's whole tree, then poll ``agent.run`` on
   the relocated agent until it answers from a leader pid. Reported: kill ->
   ``cluster.node_lost`` audit row, -> ``agent.placed`` on the leader, ->
   first answer; and the configured detection window (heartbeat x
   lost_after) for comparison. Baseline in the same run: SIGKILL of a local
   agent -> answering again (the supervisor notices a local death itself).

No assertions: this prints numbers. Machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib import Daemon, descendants, interleaved, kill, line, ms_line, section  # noqa: E402

from naosctl.client import Client  # noqa: E402
from naosd.errors import NaosError  # noqa: E402

LEADER, MEMBER = "127.0.0.2", "127.0.0.3"


def port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def cluster_env(key: Path, bind: str, node: str, leader: str, args: argparse.Namespace
                ) -> dict[str, str]:
    return {"NAOS_CLUSTER_ENABLED": "1", "NAOS_CLUSTER_BIND": bind, "NAOS_CLUSTER_NODE": node,
            "NAOS_CLUSTER_LEADER": leader, "NAOS_CLUSTER_CAPABILITIES": "gpu",
            "NAOS_CLUSTER_SECRET_FILE": str(key),
            "NAOS_CLUSTER_HEARTBEAT_S": str(args.heartbeat),
            "NAOS_CLUSTER_LOST_AFTER": str(args.lost_after), "NAOS_CLUSTER_REREGISTER_S": "10"}


def wait_for(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.01)
    raise SystemExit(f"{what}: not within {timeout}s")


def node_state(c: Client, name: str) -> str | None:
    return next((n["state"] for n in c.call("cluster.nodes")["nodes"] if n["name"] == name),
                None)


def agent_node(c: Client, name: str) -> tuple[str | None, str]:
    a = c.call("agent.inspect", name=name, logs=0)
    return a.get("node"), a["state"]


def audit_ts(c: Client, type_: str, after_seq: int) -> tuple[float, int] | None:
    rows = list(c.stream("audit.tail", n=200, type=type_))
    rows = [r for r in rows if r["seq"] > after_seq]
    if not rows:
        return None
    ts = datetime.fromisoformat(rows[0]["ts"].replace("Z", "+00:00")).timestamp()
    return ts, int(rows[0]["seq"])


def head(c: Client) -> int:
    return int(c.call("status")["audit_head"])


class Cluster:
    """A leader and its members (a new member after each loss)."""

    def __init__(self, top: Path, args: argparse.Namespace) -> None:
        self.top, self.args = top, args
        self.key = top / "cluster.key"
        fd = os.open(self.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, os.urandom(48).hex().encode())
        os.close(fd)
        self.leader_addr = f"{LEADER}:{port(LEADER)}"
        self.daemons: list[Daemon] = []
        (top / "a").mkdir()
        self.leader = self._start(top / "a", self.leader_addr, "a", "")
        self.members: list[Daemon] = []

    def _start(self, base: Path, bind: str, node: str, leader: str) -> Daemon:
        d = Daemon(base, cluster_env(self.key, bind, node, leader, self.args))
        self.daemons.append(d)
        return d

    def start_member(self, c: Client) -> Daemon:
        base = self.top / f"b{len(self.members)}"
        base.mkdir()
        m = self._start(base, f"{MEMBER}:{port(MEMBER)}", "b", self.leader_addr)
        self.members.append(m)
        wait_for("member up", lambda: node_state(c, "b") == "up")
        return m

    def stop(self) -> None:
        for d in self.daemons:
            d.stop()


def bench_runs(c: Client, n: int) -> None:
    section("1. agent.run: agent on the leader vs on the member (interleaved)")
    runs = interleaved({
        "local": lambda: c.call("agent.run", name="local", input={"x": 1}),
        "remote": lambda: c.call("agent.run", name="remote", input={"x": 1}),
    }, n)
    floor = sorted(runs["local"])[len(runs["local"]) // 2]
    print(line("agent.run, agent on the leader (baseline)", runs["local"], floor))
    print(line("agent.run, agent on the member", runs["remote"], floor))


def bench_create(c: Client) -> None:
    section("2. agent.create start=true: local vs placed on the member")
    create: dict[str, list[float]] = {"local": [], "remote": []}
    for i in range(10):
        for kind, req in (("local", []), ("remote", ["node=b"])):
            t0 = time.perf_counter()
            c.call("agent.create", name=f"c{kind}{i}", template="echo", start=True,
                   requires=req)
            create[kind].append((time.perf_counter() - t0) * 1000)
    print(ms_line("create+start, on the leader", create["local"]))
    print(ms_line("create+start, on the member", create["remote"]))
    for i in range(10):
        for kind in ("local", "remote"):
            c.call("agent.delete", name=f"c{kind}{i}")


def until_answered_by(c: Client, name: str, ok: Any) -> None:
    while True:
        try:
            r = c.call("agent.run", name=name, input={}, timeout=30)
        except NaosError:
            continue
        if ok(r["pid"]):
            return


def one_loss(cl: Cluster, c: Client) -> tuple[float, float, float, float]:
    wait_for("mover on b", lambda: agent_node(c, "mover") == ("b", "running"))
    member = cl.members[-1]
    tree = [member.proc.pid, *descendants(member.proc.pid)]
    seq = head(c)
    t_kill = time.time()
    t0 = time.perf_counter()
    kill(tree)
    member.proc.wait(timeout=30)
    until_answered_by(c, "mover", lambda pid: pid in descendants(cl.leader.proc.pid))
    answer = (time.perf_counter() - t0) * 1000
    lost = wait_for("node_lost row", lambda: audit_ts(c, "cluster.node_lost", seq))
    placed = wait_for("placed row", lambda: audit_ts(c, "agent.placed", lost[1]))
    # baseline: a local agent SIGKILLed, answering again
    pid = c.call("agent.run", name="local", input={})["pid"]
    t0 = time.perf_counter()
    kill([pid])
    until_answered_by(c, "local", lambda new: new != pid)
    local = (time.perf_counter() - t0) * 1000
    return (lost[0] - t_kill) * 1000, (placed[0] - t_kill) * 1000, answer, local


def bench_loss(cl: Cluster, c: Client) -> None:
    a = cl.args
    window = a.heartbeat * a.lost_after * 1000
    section(f"3. member loss -> agent relocated (heartbeat {a.heartbeat}s x {a.lost_after}"
            f" = {window:.0f} ms window)")
    c.call("agent.delete", name="remote")  # b is then the least loaded gpu node
    c.call("agent.create", name="mover", template="echo", start=True, requires=["gpu"])
    results = []
    for i in range(a.losses):
        if i:
            cl.start_member(c)
            c.call("agent.stop", name="mover")  # back to the member: b is less loaded
            c.call("agent.start", name="mover")
        results.append(one_loss(cl, c))
    lost, placed, answer, local = (list(x) for x in zip(*results, strict=True))
    print(ms_line("kill member -> cluster.node_lost", lost))
    print(ms_line("kill member -> agent.placed on the leader", placed))
    print(ms_line("kill member -> relocated agent answers", answer))
    print(ms_line("baseline: kill local agent -> answers", local))
    print(ms_line("cluster.node_lost -> relocated agent answers",
                  [x - y for x, y in zip(answer, lost, strict=True)]))
    med = sorted(answer)[len(answer) // 2]
    print(f"detection window {window:.0f} ms; the whole relocation is "
          f"{med / sorted(local)[len(local) // 2]:.0f}x the local restart")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--losses", type=int, default=3)
    ap.add_argument("--heartbeat", type=float, default=0.2)
    ap.add_argument("--lost-after", type=int, default=5)
    args = ap.parse_args()
    top = Path(tempfile.mkdtemp(prefix="naos-bc-", dir="/tmp"))
    cl: Cluster | None = None
    try:
        cl = Cluster(top, args)
        with Client(cl.leader.sock) as c:
            cl.start_member(c)
            c.call("agent.create", name="local", template="echo", start=True)
            c.call("agent.create", name="remote", template="echo", start=True,
                   requires=["node=b"])
            wait_for("remote running", lambda: agent_node(c, "remote") == ("b", "running"))
            bench_runs(c, args.n)
            bench_create(c)
            bench_loss(cl, c)
    finally:
        if cl is not None:
            cl.stop()
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
