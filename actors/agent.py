"""AgentActor: one agent, its supervised shell, and the process its code runs in.

The agent's code never runs in this actor's process (it holds the daemon's
frame key): the actor opens the agent's channel to naosd, starts
``naos.host`` on it, confined as the definition says
(:mod:`naosd.runtime.handler`), reports the handler's pid once it has
loaded, and from then on watches it.  naosd sends messages to the handler
over the channel directly; the actor's part is supervision.

Let it crash: a handler that raises answers its caller with
``agent_crashed`` and exits; this actor notices (it looks every
``WATCH`` and when naosd tells it), tells its supervisor why, and exits
once the supervisor has noted it (``ExitNoted``); the supervisor restarts
it according to its strategy.  A handler that cannot be loaded is a crash
at start.  The first thing a new agent does is report its own pid
(``ChildSpawned``), so a start that hangs can be killed; a *probe*
(``InitAgent.probe``) only loads the handler, confined, reports
``ProbeResult`` and exits: naosd checks a handler this way before it creates
the agent.

An agent placed on another node of a cluster, or started by an actor system
without hosting facts (tests of the actors alone), runs its handler in this
process as before (docs/cluster.md: not confined).
"""

from __future__ import annotations

import json
import os
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

from thespian.actors import ActorExitRequest, WakeupMessage

from actors.base import NaosActor, error_reply
from actors.domain.definitions import is_path_grant
from actors.handlers import AgentContext, Handler, call, load_module, make_handler
from actors.messages import (
    ChildCrashed,
    ChildDone,
    ChildPid,
    ChildSpawned,
    ExitNoted,
    HandlerGone,
    InitAgent,
    ProbeResult,
    Reply,
    RunAgent,
)
from actors.wasm.limits import wasm_limits
from naosd.errors import ActorGone, AgentCrashed, Conflict, NaosError, WasmExit
from naosd.runtime.confine.process import protect_parent
from naosd.runtime.handler import HandlerProcess, HandlerSpec
from naosd.runtime.hosting import Hosting
from naosd.runtime.hosting import current as current_hosting

# How long a dying agent waits for its supervisor to note why (ExitNoted)
# before it exits anyway (a supervisor that is gone never answers).
EXIT_NOTED_WAIT = timedelta(seconds=5)
WATCH = timedelta(milliseconds=200)  # how often the actor looks at its handler process
LOAD_TIMEOUT_S = 60.0  # a handler that has not loaded by then is a crash at start
STOP_GRACE_S = 2.0


def wasm_handler(definition: Any, db_path: str) -> Handler:
    """A handler that runs the agent's module in this process's engine:
    the message as JSON on stdin, the reply parsed from stdout (JSON if it
    is JSON, else text).  A non-zero exit or a limit is an error reply, not
    a crash: the next run gets a fresh instance anyway."""
    from pathlib import Path

    from actors.sandbox import StoreHost, open_store, run_module
    from actors.wasm import WasmEngine
    from actors.wasm.files import read_module

    module = read_module(Path(definition.source))
    engine = WasmEngine(Path(db_path).parent / "wasm-cache")
    engine.compile(module)
    # as naos.wasm_agent.wasm_grants: the execution grants, and the older
    # config.grants; a channel function answers "unavailable" here (StoreHost)
    grants = tuple(sorted({*definition.config.get("grants", ()), *definition.wasm_grants}))
    limits = wasm_limits(definition.config)
    store = open_store(db_path) if grants else None

    def handle(message: Any, ctx: AgentContext) -> Any:
        host = StoreHost(store, definition.name) if store is not None else None
        summary = run_module(engine, module, json.dumps(message).encode(), limits, grants,
                             host)
        for level, text in summary["logs"]:
            ctx.log(text, level=level)
        if summary["stderr"]:
            ctx.log(summary["stderr"].decode("utf-8", "replace")[:4096], level="warning")
        if summary["exit_code"] != 0:
            raise WasmExit(
                f"guest exited with code {summary['exit_code']}: "
                f"{summary['stderr'].decode('utf-8', 'replace')[:500]}")
        ctx.cost_micro_usd += summary["cost_micro_usd"]
        ctx.log(f"fuel {summary['fuel_used']}, cost {summary['cost_micro_usd']} micro-USD")
        return _decode(summary["stdout"])

    return handle


def load_error(exc: BaseException, source: str) -> str:
    """``file, line N: Type: message`` for a handler that failed to load: the
    line is the handler file's own frame nearest the failure (or the file
    and line of a syntax error), so the author sees where to look."""
    what = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}, line {exc.lineno}: {type(exc).__name__}: {exc.msg}"
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if f.filename == source] or frames[-1:]
    if not own or isinstance(exc, NaosError):
        return what  # our own error names the file already
    return f"{own[-1].filename}, line {own[-1].lineno}: {what}"


def _decode(out: bytes) -> Any:
    text = out.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def handler_spec(definition: Any) -> HandlerSpec:
    """The handler process's confinement inputs, from the agent's definition."""
    if definition.source_kind == "template":
        import actors.templates

        snapshot = str(Path(actors.templates.__file__).parent)
    else:
        snapshot = str(Path(definition.source).parent)
    execution = definition.execution
    fields = {k: execution[k] for k in ("env", "cwd", "limits", "confinement")
              if k in execution}
    # Only "net" and path grants are about confinement; a WASM agent's host
    # functions are the engine's business (naos.wasm_agent), not the kernel's.
    confined = [g for g in execution.get("grants", ()) if g == "net" or is_path_grant(g)]
    if confined:
        fields["grants"] = confined
    return HandlerSpec(definition.name, snapshot, fields)


class AgentActor(NaosActor):
    @staticmethod
    def actorSystemCapabilityCheck(capabilities: dict[str, Any],
                                   requirements: dict[str, Any] | None) -> bool:
        """In cluster mode naosd pins an agent to a node by requirements."""
        from actors.domain.placement import satisfies

        return satisfies(capabilities, requirements)

    def __init__(self) -> None:
        super().__init__()
        self._handler: Handler | None = None
        self._ctx: AgentContext | None = None
        self._supervisor: Any = None
        self._db_path = ""
        self._dying = False
        self._exit_sent = False
        self._sandboxed = False
        self._process: HandlerProcess | None = None

    def receiveMsg_InitAgent(self, msg: InitAgent, sender: Any) -> None:
        definition = msg.definition
        self.name = definition.name
        self._supervisor = sender
        self._db_path = msg.db_path
        self.send(sender, ChildSpawned(definition.name, os.getpid()))  # killable from now
        hosting = current_hosting()
        if hosting is not None and not msg.remote:
            self._host(definition, hosting, probe=msg.probe)
            return
        try:
            self._load(definition, msg.db_path)
        except Exception as exc:  # noqa: BLE001 - any failure to load is a crash
            error = load_error(exc, definition.source)
            if msg.probe:
                self._probed(error)
            else:
                self._crash(f"cannot start: {error}")
            return
        if msg.probe:
            self._probed("")
        else:
            self.send(sender, ChildPid(definition.name, os.getpid()))

    # -- the handler in its own, confined process -----------------------------
    def _host(self, definition: Any, hosting: Hosting, *, probe: bool) -> None:
        """Start the handler process; report it once it has loaded (or why not)."""
        protect_parent()  # a handler cannot read this process's memory (the key)
        spec = handler_spec(definition)
        try:
            if probe:
                self._process = HandlerProcess.probe(spec, hosting, {
                    "agent": definition.name, "kind": definition.source_kind,
                    "source": definition.source, "config": definition.config})
            else:
                self._process = HandlerProcess.start(spec, hosting)
            status = self._process.wait_loaded(LOAD_TIMEOUT_S)
        except NaosError as exc:
            status = {"loaded": False, "error": exc.message}
        if probe:
            self._probed("" if status.get("loaded") else str(status.get("error")))
            return
        if not status.get("loaded"):
            self._crash(f"cannot start: {status.get('error')}")
            return
        # The child is this actor (its exit is what supervision sees); the handler
        # dies with it (parent-death signal) and this actor dies after the handler.
        self.send(self._supervisor, ChildPid(definition.name, os.getpid()))
        self.wakeupAfter(WATCH, payload="watch")

    def _watch(self) -> None:
        if self._process is None or self._dying:
            return
        why = self._process.exited()
        if why is None:
            self.wakeupAfter(WATCH, payload="watch")
        elif why.startswith("handler exited with code 0"):
            self._leave(ChildDone(self.name))  # ctx.stop(): a normal exit
        else:
            self._crash(why)

    def receiveMsg_HandlerGone(self, msg: HandlerGone, sender: Any) -> None:
        """naosd saw the channel close: look now rather than at the next watch."""
        if self._process is not None and not self._dying:
            if self._process.exited() is None:
                self._process.kill()  # a handler without its channel serves nobody
            self._watch_now()

    def _watch_now(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + 1.0  # the exit follows the closed channel at once
        while self._process.exited() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        self._watch()

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        """Stopped (or restarted): end the handler first, gracefully."""
        if self._process is not None:
            self._process.stop(STOP_GRACE_S)
            self._process.close()

    def _load(self, definition: Any, db_path: str) -> None:
        self._ctx = AgentContext(definition.name, dict(definition.config))
        self._sandboxed = definition.source_kind == "wasm"
        if self._sandboxed:
            self._handler = wasm_handler(definition, db_path)
        else:
            module = load_module(definition.source_kind, definition.source, definition.name)
            self._handler = make_handler(module, self._ctx)

    def _probed(self, error: str) -> None:
        """A probe only loads the handler: say how it went, then exit."""
        self._dying = True
        self.send(self._supervisor, ProbeResult(self.name, error))
        self._exit()

    def receiveMsg_HostedFor(self, msg: Any, sender: Any) -> None:
        """Placed here by another node's supervisor: die if its leader stops
        beating (cluster mode, naosd.runtime.fence)."""
        if sender == self._supervisor:
            from naosd.runtime import fence

            fence.register(msg.run, os.getpid())

    def receiveMsg_RunAgent(self, msg: RunAgent, sender: Any) -> None:
        if self._dying:  # waiting for ExitNoted: not run, so the caller resends it
            raise ActorGone(f"agent {self.name!r} is exiting; the message was not run")
        if self._handler is None or self._ctx is None:
            raise Conflict(f"agent {self.name!r} is not ready")
        self._ctx.request_id = msg.request_id
        self._ctx.idempotency_key = msg.idempotency_key
        try:
            output, ms = call(self._handler, msg.input, self._ctx)
        except NaosError as exc:
            if not self._sandboxed:
                self._crash_on(msg, sender, exc)
                return
            # a sandboxed guest failed or hit a limit: an error, not a crash
            self._ctx.log(str(exc), level="error")
            self.send(sender, Reply(msg.request_id, False, self._result(None, 0.0),
                                    exc.code, str(exc)))
            return
        except Exception as exc:  # noqa: BLE001 - let it crash, but tell the caller
            self._crash_on(msg, sender, exc)
            return
        self.send(sender, Reply(msg.request_id, True, self._result(output, ms)))
        if self._ctx.stop_requested:
            self._leave(ChildDone(self.name))

    def _crash_on(self, msg: RunAgent, sender: Any, exc: Exception) -> None:
        """Answer the caller with ``agent_crashed`` and the run's log lines,
        then crash."""
        assert self._ctx is not None
        reason = f"handler raised {type(exc).__name__}: {exc}"
        self._ctx.log(reason, level="error")
        crashed = error_reply(msg, AgentCrashed(f"agent {self.name!r} crashed: {reason}"))
        self.send(sender, Reply(crashed.request_id, False, self._result(None, 0.0),
                                crashed.error_code, crashed.message))
        self._crash(reason)

    def _result(self, output: Any, ms: float) -> dict[str, Any]:
        assert self._ctx is not None
        cost, self._ctx.cost_micro_usd = self._ctx.cost_micro_usd, 0
        return {"output": output, "ms": round(ms, 3), "pid": os.getpid(),
                "logs": self._ctx.take_lines(), "cost_micro_usd": cost}

    def _crash(self, reason: str) -> None:
        """Tell the supervisor why, then exit once it has noted it."""
        self._leave(ChildCrashed(self.name, reason))

    def _leave(self, notice: ChildCrashed | ChildDone) -> None:
        """Send ``notice`` to the supervisor and exit when it answers
        ``ExitNoted`` (or after ``EXIT_NOTED_WAIT``).  Exiting at once would
        race: on a member node Thespian's exit notice comes from that node's
        admin, on another connection, and may reach the supervisor first, so
        the reason would be lost ("process died")."""
        self._dying = True
        if self._supervisor is None:
            self._exit()
            return
        self.send(self._supervisor, notice)
        self.wakeupAfter(EXIT_NOTED_WAIT, payload="exit-noted")

    def receiveMsg_ExitNoted(self, msg: ExitNoted, sender: Any) -> None:
        if self._dying and sender == self._supervisor:
            self._exit()

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        if msg.payload == "exit-noted" and self._dying:
            self._exit()
        elif msg.payload == "watch":
            self._watch()

    def _exit(self) -> None:
        if not self._exit_sent:
            self._exit_sent = True
            self.send(self.myAddress, ActorExitRequest())
