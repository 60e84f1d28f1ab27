"""The daemon's side of agents and supervisors: definitions in SQLite first,
then the live tree is told (``Sync``) and watched until it matches.

The actors own the processes; this module owns the order of operations a
user sees: validate, persist with an audit row, reconcile, wait, answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actors.domain.definitions import (
    IMPLICIT_SUPERVISOR,
    AgentDef,
    SupervisorDef,
    changed_fields,
)
from actors.domain.placement import choose, parse_requirements
from actors.domain.reconcile import comparable
from actors.messages import (
    Activate,
    Deactivate,
    GetTree,
    HandlerGone,
    ProbeAgent,
    Resolve,
    RunAgent,
    Sync,
)
from naosd.agents.api import Caller
from naosd.agents.checks import check_python_source
from naosd.agents.runs import OPERATOR
from naosd.errors import (
    ActorGone,
    AgentCrashed,
    Conflict,
    InvalidRequest,
    NaosError,
    NotFound,
    RequestTimeout,
    Unplaceable,
    from_wire,
)
from naosd.runtime.procs import is_descendant, process_alive
from naosd.storage import cluster as cluster_store
from naosd.storage import definitions as defs_store
from naosd.storage import runs as orch_store

if TYPE_CHECKING:
    from naosd.agents.channels import AgentChannels
    from naosd.agents.runs import AgentRuns
    from naosd.daemon import Daemon

log = logging.getLogger("naosd.agents")

POLL_S = 0.01
DOWN_STATES = ("stopped", "failed", "paused")
WATCH_S = 0.02  # how often a running call checks that its agent's process lives
GRACE_S = 0.05  # a crashing handler's error reply is sent before its process exits


def _rid() -> str:
    return uuid.uuid4().hex


def find_node(tree: dict[str, Any], name: str) -> dict[str, Any] | None:
    if tree.get("name") == name:
        return tree
    for child in tree.get("children") or []:
        found = find_node(child, name)
        if found is not None:
            return found
    return None


class Agents:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self.last_used: dict[str, float] = {}  # on-demand agents -> last activity
        self._where: dict[str, dict[str, Any]] = {}  # agent -> last resolved address
        # agent -> pid of a process that answered agent_crashed: it exits now, so
        # the next run waits for its replacement instead of reaching a dying process
        self._exiting: dict[str, int] = {}
        self.runs: AgentRuns | None = None  # the channel path (set by the composition root)
        self.channels: AgentChannels | None = None

    # -- plumbing ------------------------------------------------------------
    async def tree(self) -> dict[str, Any]:
        reply = await self.d.bridge.ask(GetTree(_rid()))
        result: dict[str, Any] = reply.result
        return result

    async def resolve(self, name: str, *, wait_s: float = 0.0, stale: int = 0
                      ) -> dict[str, Any] | None:
        """Where ``name`` runs, or None.  With ``wait_s`` the root answers as
        soon as it registers (a process other than ``stale``): no polling."""
        try:
            reply = await self.d.bridge.ask(Resolve(_rid(), name, wait_s, stale),
                                            timeout_s=wait_s + 5 if wait_s else None)
        except NotFound:
            return None
        result: dict[str, Any] = reply.result
        return result

    async def sync(self, supervisor: str | None, *, stop: tuple[str, ...] = (),
                   start: tuple[str, ...] = ()) -> None:
        """Tell ``supervisor`` (None: the root) to reconcile with the DB;
        ``stop`` and ``start`` name the children an operator stopped or
        started (see ``Sync``)."""
        if supervisor is None:
            await self.d.bridge.ask(Sync(_rid(), stop, start))
            return
        where = await self.resolve(supervisor)
        if where is None:
            return  # not running: it reads the DB when it starts
        await self.d.bridge.ask_to(where["address"], Sync(_rid(), stop, start))

    async def _parent_sync(self, parent: str | None, **names: tuple[str, ...]) -> None:
        await self.sync(parent or IMPLICIT_SUPERVISOR, **names)

    async def wait_for(self, name: str, *, running: bool, wait_s: float) -> dict[str, Any]:
        """Wait until ``name`` runs (the root answers as soon as it registers,
        and fails the wait at once if its supervisor reports it failed), or
        until it is down: unregistered and stopped, failed or gone in the tree."""
        if running:
            found = await self.resolve(name, wait_s=wait_s)
            return found or await self._explain_timeout(name, running, wait_s)
        deadline = time.monotonic() + wait_s
        while True:
            if await self.resolve(name) is None:
                node = find_node(await self.tree(), name)
                if node is None or node.get("state") in DOWN_STATES:
                    return {}
            if time.monotonic() > deadline:
                return await self._explain_timeout(name, running, wait_s)
            await asyncio.sleep(POLL_S)

    async def _explain_timeout(self, name: str, running: bool, wait_s: float
                               ) -> dict[str, Any]:
        node = find_node(await self.tree(), name) or {}
        why = node.get("last_error") or node.get("state") or "not in the tree"
        verb = "start" if running else "stop"
        raise RequestTimeout(f"{name!r} did not {verb} within {wait_s:g}s ({why})")

    async def db(self, fn: Any) -> Any:
        return await self.d.db.call(fn)

    # -- agents ------------------------------------------------------------------
    async def create(self, definition: AgentDef, *, start: bool, wait_s: float
                     ) -> dict[str, Any]:
        """Check that the agent can load and be placed, then commit it (with
        its audit row) and start it: a refused agent leaves nothing behind."""
        await self.db(lambda s: _check_new(s, definition))
        await self._check_placeable(definition, start=start)
        await self.check_loads(definition, wait_s=wait_s)
        created = await self.db(lambda s: defs_store.create_agent(s, definition))
        await self.d.db.notify()
        if start:
            return await self.start(created.name, wait_s=wait_s)
        return await self.describe(created.name)

    async def update(self, new: AgentDef, *, wait_s: float) -> dict[str, Any]:
        """Roll out a new definition of an existing agent: checked like create
        (a Python handler must load in a probe, else nothing changes), then
        committed with its audit row (old and new code digests) and, when it
        changed something, the agent restarted on it if it was up (an agent
        run on demand is stopped: its next message starts the new code; one
        that is down, stopped or failed, stays so and starts on it later)."""
        old = await self.db(lambda s: defs_store.get_agent(s, new.name))
        new = comparable(new, old).validated()  # its state and place are not the update's
        changed = changed_fields(old, new)
        view: dict[str, Any] = {"old_digest": old.execution.get("digest") or "",
                                "new_digest": new.execution.get("digest") or "",
                                "changed": changed, "restarted": False}
        if not changed:
            return {**await self.describe(new.name), **view}
        await self._check_placeable(new, start=False)
        await self.check_loads(new, wait_s=wait_s)
        await self.db(lambda s: defs_store.update_agent(s, new))
        await self.d.db.notify()
        node = find_node(await self.tree(), new.name)
        up = node is not None and node.get("state") not in DOWN_STATES
        if old.supervisor != new.supervisor:
            await self._parent_sync(old.supervisor)
        if up:
            await self.stop(new.name, wait_s=wait_s)
        if up and old.desired == "running":
            await self.start(new.name, wait_s=wait_s)
            view["restarted"] = True
        return {**await self.describe(new.name), **view}

    async def check_loads(self, definition: AgentDef, *, wait_s: float) -> None:
        """A Python handler is compiled here (syntax errors; nothing runs),
        then loaded in a throwaway agent process (import-time errors, no
        ``handle``): naosd itself never runs agent code.  Templates are ours
        and WASM modules are validated by the sandbox."""
        if definition.source_kind != "python":
            return
        await asyncio.to_thread(check_python_source, definition.source)
        implicit = await self.resolve(IMPLICIT_SUPERVISOR)
        if implicit is None:
            raise Conflict("the agents supervisor is not running")
        await self.d.bridge.ask_to(implicit["address"], ProbeAgent(_rid(), definition, wait_s),
                                   timeout_s=wait_s + 5)

    async def _check_placeable(self, definition: AgentDef, *, start: bool) -> None:
        """An agent with requirements that no node can meet is refused at
        once: always on a single host (no node can ever have them), and in
        cluster mode when it is to start now."""
        if not definition.requires:
            return
        req = parse_requirements(definition.requires)
        nodes, loads = await self.db(lambda s: (cluster_store.nodes(s), cluster_store.loads(s)))
        if nodes and not start:
            return  # a node that can run it may join before it is started
        if choose(req, nodes, loads) is None:
            where = "no node that is up has it" if nodes else "cluster mode is off"
            raise Unplaceable(f"agent {definition.name!r} is unplaceable: it requires"
                              f" {req} and {where}")

    async def start(self, name: str, *, wait_s: float) -> dict[str, Any]:
        """Start ``name`` for good (desired running, never reaped); a failed
        agent is given a fresh start."""
        self.last_used.pop(name, None)
        agent = await self.db(lambda s: defs_store.get_agent(s, name))
        if agent.source_kind == "python":
            await asyncio.to_thread(check_python_source, agent.source)
        await self._check_placeable(agent, start=True)
        await self.db(lambda s: defs_store.set_desired(s, "agent", name, "running"))
        await self._ensure_parent_running(agent.supervisor)
        await self._parent_sync(agent.supervisor, start=(name,))
        await self.wait_for(name, running=True, wait_s=wait_s)
        return await self.describe(name)

    async def _ensure_parent_running(self, supervisor: str | None) -> None:
        if supervisor is None:
            return
        sup = await self.db(lambda s: defs_store.get_supervisor(s, supervisor))
        if sup.desired != "running":
            raise Conflict(f"agent's supervisor {supervisor!r} is stopped: "
                           f"naosctl supervisor start {supervisor}")

    async def stop(self, name: str, *, wait_s: float) -> dict[str, Any]:
        """Stop ``name`` in whatever state it is (running, starting, backing
        off, failed, running on demand): it is down when this returns."""
        self.last_used.pop(name, None)
        agent = await self.db(lambda s: defs_store.get_agent(s, name))
        await self.db(lambda s: defs_store.set_desired(s, "agent", name, "stopped"))
        await self._parent_sync(agent.supervisor, stop=(name,))
        await self.wait_for(name, running=False, wait_s=wait_s)
        return await self.describe(name)

    async def delete(self, name: str, *, wait_s: float, force: bool = False) -> dict[str, Any]:
        """Stop and forget ``name``: its definition and its private files (a
        later agent of the same name must not find them); logs and audit stay.
        Refused while a saga, workflow or pool names it, and (without
        ``force``, as ``docker rm``) while it runs under a supervisor of the
        operator's, which would otherwise restart it."""
        agent = await self.db(lambda s: defs_store.get_agent(s, name))
        users = await self.db(lambda s: orch_store.users_of(s, name))
        if users:
            raise Conflict(f"agent {name!r} is used by {', '.join(users)}: delete or change "
                           "them first")
        node = find_node(await self.tree(), name)
        if agent.supervisor and not force and node and node.get("state") not in DOWN_STATES:
            raise Conflict(f"agent {name!r} is running under supervisor {agent.supervisor!r}:"
                           " stop it first, or delete it with --force")
        await self.stop(name, wait_s=wait_s)
        await self.db(lambda s: defs_store.delete_agent(s, name))
        await asyncio.to_thread(_remove_files, self.d.config.state_dir / "agents" / name)
        return {"deleted": name}

    async def run(self, name: str, payload: Any, *, wait_s: float, key: str,
                  caller: Caller | None = None) -> dict[str, Any]:
        """Run a message on agent ``name``: over its channel (every agent whose
        handler runs in its own process), or through its actor (an agent placed
        on another node of a cluster)."""
        if name in self.last_used:
            self.last_used[name] = time.monotonic()
        if self.runs is not None and await self._hosted(name):
            who = caller or Caller(OPERATOR, time.monotonic() + wait_s, (), {})
            return await self.runs.run_as(name, payload, caller=who, key=key)
        return await self._run_in_actor(name, payload, wait_s=wait_s, key=key)

    async def _hosted(self, name: str) -> bool:
        """Whether ``name``'s handler runs in a process of its own on this node."""
        if self.channels is not None and self.channels.get(name) is not None:
            return True
        agent = await self.db(lambda s: defs_store.get_agent(s, name))  # NotFound
        return not (agent.requires and self.d.config.cluster_enabled)

    def handler_gone(self, agent: str, actor_pid: int) -> None:
        """An agent's channel closed: have its actor look at its handler now
        (the actor would notice within its watch interval anyway)."""
        asyncio.get_running_loop().create_task(self._tell_gone(agent, actor_pid))

    async def _tell_gone(self, agent: str, actor_pid: int) -> None:
        # a hurry only: naosd stopping (the bridge closed) or the agent gone
        # is no error, and the task has nobody to report to
        with contextlib.suppress(NaosError):
            where = self._where.get(agent) or await self.resolve(agent)
            if where is None or where.get("pid") != actor_pid:
                return  # already replaced, or not registered: nothing to hurry
            await self.d.bridge.tell_to(where["address"], HandlerGone(actor_pid))

    async def activate_for(self, name: str, deadline: float) -> None:
        """Start ``name`` for a run due by ``deadline`` (the channel path waits
        for its handler's channel itself)."""
        await self.activate(name, wait_s=max(deadline - time.monotonic(), 0.001))

    async def _run_in_actor(self, name: str, payload: Any, *, wait_s: float, key: str
                            ) -> dict[str, Any]:
        where = await self._locate(name, wait_s, stale=self._exiting.get(name, 0))
        if where is None or where.get("kind") != "agent":
            raise NotFound(f"no running agent named {name!r}")
        self._where[name] = where
        if self._exiting.get(name) != where.get("pid"):
            self._exiting.pop(name, None)
        msg = RunAgent(_rid(), payload, key)
        try:
            reply = await self._ask_watching(name, where, msg, wait_s)
        except ActorGone:  # died before the message got there: not delivered, so resend
            self._where.pop(name, None)
            where = await self._locate(name, wait_s, stale=int(where.get("pid") or 0))
            if where is None:
                raise NotFound(f"agent {name!r} is not running") from None
            reply = await self._ask_watching(name, where, msg, wait_s)
        result = reply.result or {}
        await self._store_logs(name, result.get("logs") or [])
        await self.d.db.audit("agent.run", agent=name, ok=reply.ok, ms=result.get("ms"),
                              error=reply.error_code or None, idempotency_key=key or None,
                              cost_micro_usd=result.get("cost_micro_usd", 0))
        if not reply.ok:
            if reply.error_code == AgentCrashed.code:
                self._exiting[name] = int(where.get("pid") or 0)
            raise from_wire(reply.error_code, reply.message)
        return {"agent": name, "output": result.get("output"), "ms": result.get("ms"),
                "pid": result.get("pid"), "cost_micro_usd": result.get("cost_micro_usd", 0)}

    async def _locate(self, name: str, wait_s: float, stale: int = 0
                      ) -> dict[str, Any] | None:
        """The address of a live process of agent ``name``: the cached one,
        the registered one, the one that replaces a dead process, or a newly
        activated one."""
        where = self._where.get(name)
        if where is not None and process_alive(where.get("pid")) and where.get("pid") != stale:
            return where
        where = await self.resolve(name)
        if where is not None and (stale == where.get("pid") or not process_alive(where.get("pid"))):
            # its process just died: wait for the supervisor's replacement
            return await self.resolve(name, wait_s=wait_s, stale=int(where.get("pid") or 0))
        if where is None:  # deactivated or never started: activate transparently
            where = await self.activate(name, wait_s=wait_s)
        return where

    async def _ask_watching(self, name: str, where: dict[str, Any], msg: RunAgent,
                            wait_s: float) -> Any:
        """Ask the agent, failing at once if its process dies meanwhile (a
        message sent to a dying process would otherwise wait for the whole
        timeout)."""
        ask = asyncio.ensure_future(
            self.d.bridge.ask_to(where["address"], msg, timeout_s=wait_s, raw=True))
        pid = where.get("pid")
        while not ask.done():
            await asyncio.wait([ask], timeout=WATCH_S)
            if not ask.done() and not process_alive(pid):
                await asyncio.wait([ask], timeout=GRACE_S)  # its crash reply may be on the way
                if not ask.done():
                    ask.cancel()
                    self._where.pop(name, None)
                    raise AgentCrashed(f"agent {name!r} (pid {pid}) died during the run; "
                                       "its supervisor restarts it")
        reply = ask.result()
        if not reply.ok and reply.error_code == ActorGone.code:
            raise ActorGone(reply.message)  # an exiting agent did not run it: resend
        return reply

    async def activate(self, name: str, *, wait_s: float) -> dict[str, Any] | None:
        """Start an agent for this call: agents outside user trees are run on
        demand (and stopped again when idle); others are started for good."""
        agent = await self.db(lambda s: defs_store.get_agent(s, name))
        if agent.supervisor is not None:
            await self.start(name, wait_s=wait_s)
            return await self.resolve(name)
        implicit = await self.resolve(IMPLICIT_SUPERVISOR)
        if implicit is None:
            raise Conflict("the agents supervisor is not running")
        await self.d.bridge.ask_to(implicit["address"], Activate(_rid(), name))
        if agent.desired != "running":
            self.last_used[name] = time.monotonic()
        return await self.wait_for(name, running=True, wait_s=wait_s)

    async def reap_idle(self, idle_s: float) -> list[str]:
        """Deactivate on-demand agents unused for ``idle_s`` seconds."""
        now = time.monotonic()
        idle = [n for n, t in self.last_used.items() if now - t >= idle_s]
        implicit = await self.resolve(IMPLICIT_SUPERVISOR) if idle else None
        for name in idle:
            del self.last_used[name]
            if implicit is not None:
                await self.d.bridge.ask_to(implicit["address"], Deactivate(_rid(), name))
        return idle

    async def _store_logs(self, name: str, lines: list[Any]) -> None:
        if lines:
            rows = [tuple(x) for x in lines]
            await self.db(lambda s: defs_store.append_logs(s, name, rows))
            await self.d.db.notify()

    async def kill(self, name: str) -> dict[str, Any]:
        await self.db(lambda s: defs_store.get_agent(s, name))  # NotFound: "no agent named"
        where = await self.resolve(name)
        if where is None or not where.get("pid"):
            raise Conflict(f"agent {name!r} is not running")
        pid = int(where["pid"])
        if not is_descendant(pid, os.getpid()):
            raise Conflict(f"pid {pid} is not one of this daemon's processes")
        os.kill(pid, signal.SIGKILL)
        await self.d.db.audit("agent.killed", agent=name, pid=pid, by="naosctl kill")
        return {"killed": name, "pid": pid}

    async def describe(self, name: str) -> dict[str, Any]:
        agent = await self.db(lambda s: defs_store.get_agent(s, name))
        node = find_node(await self.tree(), name)
        return agent_view(agent, node)

    async def list(self) -> list[dict[str, Any]]:
        agents = await self.db(lambda s: defs_store.list_agents(s))
        tree = await self.tree()
        return [agent_view(a, find_node(tree, a.name)) for a in agents]

    # -- supervisors -----------------------------------------------------------------
    async def create_supervisor(self, definition: SupervisorDef) -> dict[str, Any]:
        created = await self.db(lambda s: defs_store.create_supervisor(s, definition))
        return created.to_dict()

    async def add_child(self, supervisor: str, child: str, restart: str) -> dict[str, Any]:
        old_parent = await self.db(lambda s: _parent_of(s, child))
        await self.db(lambda s: defs_store.attach(s, child, supervisor, restart))
        await self._parent_sync(old_parent)
        await self.sync(supervisor)
        return {"supervisor": supervisor, "child": child, "restart": restart}

    async def start_supervisor(self, name: str, *, wait_s: float) -> dict[str, Any]:
        sup = await self.db(lambda s: defs_store.get_supervisor(s, name))
        await self.db(lambda s: _start_subtree(s, name))
        await self.sync(sup.parent, start=(name,))
        await self.wait_for(name, running=True, wait_s=wait_s)
        return await self.supervisor_tree(name)

    async def stop_supervisor(self, name: str, *, wait_s: float) -> dict[str, Any]:
        sup = await self.db(lambda s: defs_store.get_supervisor(s, name))
        await self.db(lambda s: defs_store.set_desired(s, "supervisor", name, "stopped"))
        await self.sync(sup.parent) if sup.parent else await self.sync(None)
        await self.wait_for(name, running=False, wait_s=wait_s)
        return {"name": name, "state": "stopped"}

    async def delete_supervisor(self, name: str, *, wait_s: float) -> dict[str, Any]:
        """Stop and forget an empty supervisor (one with children is refused:
        move or delete them first)."""
        await self.db(lambda s: _check_empty(s, name))
        await self.stop_supervisor(name, wait_s=wait_s)
        await self.db(lambda s: defs_store.delete_supervisor(s, name))
        await self.d.db.notify()
        return {"deleted": name}

    async def supervisor_tree(self, name: str | None) -> dict[str, Any]:
        tree = await self.tree()
        if name is None:
            return tree
        node = find_node(tree, name)
        if node is None:
            sup = await self.db(lambda s: defs_store.get_supervisor(s, name))
            return {**sup.to_dict(), "kind": "supervisor", "state": "stopped", "children": []}
        return node


def _remove_files(path: Path) -> None:
    """Remove an agent's private dir; rmtree never follows a link the agent
    planted there (it walks by descriptors on Linux)."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)


def _check_new(store: Any, definition: AgentDef) -> None:
    """What ``create_agent`` would refuse, checked before anything is loaded."""
    definition.validated()
    taken = defs_store.name_taken(store, definition.name)
    if taken:
        raise Conflict(f"the name {definition.name!r} is already used by a {taken}")
    if definition.supervisor:
        defs_store.get_supervisor(store, definition.supervisor)


def _check_empty(store: Any, name: str) -> None:
    if name == IMPLICIT_SUPERVISOR:
        raise InvalidRequest(f"the supervisor {name!r} is naosd's own: it cannot be deleted")
    defs_store.get_supervisor(store, name)  # NotFound
    kids = [c.name for c in defs_store.children_of(store, name)]
    if kids:
        raise Conflict(f"supervisor {name!r} still has children ({', '.join(kids)}): move or "
                       "delete them first")


def _parent_of(store: Any, child: str) -> str | None:
    kind = defs_store.name_taken(store, child)
    if kind == "agent":
        return defs_store.get_agent(store, child).supervisor
    if kind == "supervisor":
        return defs_store.get_supervisor(store, child).parent
    raise NotFound(f"no agent or supervisor named {child!r}")


def _start_subtree(store: Any, name: str) -> None:
    """Mark a supervisor and everything under it as desired running."""
    defs_store.set_desired(store, "supervisor", name, "running")
    for child in defs_store.children_of(store, name):
        if isinstance(child, SupervisorDef):
            _start_subtree(store, child.name)
        elif child.desired != "running":
            defs_store.set_desired(store, "agent", child.name, "running")


def agent_view(agent: AgentDef, node: dict[str, Any] | None) -> dict[str, Any]:
    view = agent.to_dict()
    node = node or {}
    started = node.get("started_at")
    view.update(
        state=node.get("state", "stopped"), pid=node.get("pid"),
        restarts=node.get("restarts", 0), last_error=node.get("last_error") or "",
        uptime_s=round(time.monotonic() - started, 3) if started else None,
        supervisor=agent.supervisor or IMPLICIT_SUPERVISOR,
        node=node.get("node"),
    )
    return view
