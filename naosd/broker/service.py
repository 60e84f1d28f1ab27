"""The broker: route a task to the cheapest capable handler and run it through the
request pipeline ``route -> trust check -> cost reserve -> execute -> settle/release ->
audit``.

Where each box runs (the reasons and measurements are in docs/architecture.md):

- routing is the pure :func:`actors.domain.routing.route` over the catalog (built-in
  skills plus installed WASM skills, held in memory and reloaded on install/remove);
- the trust gate and the LLM are async HTTP clients on naosd's event loop;
- the cost controller (:mod:`naosd.broker.cost`) is owned by the event loop, so a
  reservation is atomic without a lock;
- built-in skills run inline (pure, linear, input capped); WASM skills run in the
  sandbox pool actors (fuel metered); the LLM through its client;
- the ledger row, the changed budgets and every audit row of one task are one
  SQLite transaction on the store thread.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

from actors.domain import routing
from actors.domain.skill_manifest import SkillManifest, parse_manifest
from actors.domain.trust import Decision, TrustDenied
from naosd.broker.builtin_skills import BUILTIN, BUILTIN_BY_NAME, SkillFailed
from naosd.broker.cost import CostController, Event, Hold
from naosd.broker.ledger_writer import LedgerWriter
from naosd.errors import Conflict, InvalidRequest, NaosError
from naosd.storage import ledger as bs

if TYPE_CHECKING:
    from naosd.daemon import Daemon

log = logging.getLogger("naosd.broker.service")

MAX_TASK_CHARS: Final = 64 * 1024
RECENT: Final = 100  # routing decisions kept for the dashboard
PREVIEW_CHARS: Final = 120
SKILL_FUEL: Final = 200_000_000  # per WASM skill run; ~25 ms of a tight loop here
SKILL_TIMEOUT_MS: Final = 5_000
FUEL_PRICE_PER_MFUEL: Final = 1  # micro-dollars per million fuel (the sandbox tariff)
PROMPT_OVERHEAD_TOKENS: Final = 20
EST_OUT_TOKENS: Final = 256
# Errors of a WASM run that started: the sandbox charges the whole fuel budget for them.
WASM_RUN_ERRORS: Final = frozenset({"wasm_out_of_fuel", "wasm_timeout", "wasm_memory_limit",
                                    "wasm_output_too_large", "wasm_trap", "wasm_exit",
                                    "wasm_run_error"})
# The price table used for "what would sending everything to the LLM cost" when no
# LLM is configured: micro-dollars per 1K input / output tokens (a small hosted model).
REFERENCE_LLM_PRICES: Final = (150, 600)


class TrustCheck(Protocol):
    """:class:`naosd.broker.trust_gate.TrustGate`: the decision and its audit detail, not audited
    (the broker writes the ``trust.allow``/``trust.deny`` row with the task's record)."""

    async def evaluate(self, agent: str | None, cost_micro: int
                       ) -> tuple[Decision, dict[str, Any]]: ...


class LlmCompleter(Protocol):
    """:class:`naosd.broker.llm.service.LlmService`."""

    async def complete(self, prompt: str, *, max_tokens: int | None = None,
                       agent: str | None = None) -> Any: ...

    def estimate_cost_micro(self, prompt: str, max_tokens: int | None) -> int: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    output: str
    cost_micro: int
    estimated: bool = False
    detail: dict[str, Any] | None = None


class Broker:
    def __init__(self, daemon: Daemon, *, gate: TrustCheck, llm: LlmCompleter | None = None,
                 llm_prices: tuple[int, int] | None = None, no_llm_reason: str = "") -> None:
        self._d = daemon
        self.gate = gate
        self.llm = llm
        self.llm_prices = llm_prices or REFERENCE_LLM_PRICES
        self.llm_prices_source = "configured" if llm_prices else "reference"
        self._no_llm_reason = no_llm_reason
        self.cost = CostController()
        self.writer = LedgerWriter(daemon.db)
        self._installed: dict[str, bs.InstalledSkill] = {}
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT)
        """The last routing decisions with their scores and a task preview, for
        the dashboard; in memory only: task text never enters the audit log."""

    @property
    def thresholds(self) -> routing.Thresholds:
        """From the current configuration (a reload changes them at once)."""
        config = self._d.config
        return routing.Thresholds(config.broker_skill_threshold, config.broker_wasm_threshold)

    async def start(self) -> None:
        """Load the installed skills and the budgets."""
        await self._reload_catalog()
        self.cost.load(await self._d.db.call(bs.list_budgets))

    # -- catalog ---------------------------------------------------------------------
    def catalog(self) -> list[routing.Skill]:
        installed = (s.manifest.skill() for s in self._installed.values())
        return [*(s.skill for s in BUILTIN), *installed]

    def skills(self) -> list[dict[str, Any]]:
        out = [_skill_info(s.skill, s.description, "builtin") for s in BUILTIN]
        for inst in self._installed.values():
            info = _skill_info(inst.manifest.skill(), inst.manifest.description, "installed")
            info.update(version=inst.manifest.version, sha256=inst.sha256,
                        installed_at=inst.installed_at, bytes=len(inst.module))
            out.append(info)
        return out

    async def install(self, manifest_raw: bytes, module: bytes, sha256: str | None,
                      *, replace: bool) -> dict[str, Any]:
        """Validate everything first (manifest, digest, module), then one transaction."""
        manifest = parse_manifest(manifest_raw)
        digest = _check_digest(manifest, module, sha256)
        if manifest.name in BUILTIN_BY_NAME or manifest.name == routing.LLM_NAME:
            raise Conflict(f"skill name {manifest.name!r} is taken by a built-in route")
        await self._validate_module(module)
        result = await self._d.db.call(
            lambda s: bs.install_skill(s, manifest, module, digest, replace=replace))
        await self._reload_catalog()
        await self._d.db.notify()
        return result

    async def remove(self, name: str) -> None:
        await self._d.db.call(lambda s: bs.remove_skill(s, name))
        await self._reload_catalog()
        await self._d.db.notify()

    async def _reload_catalog(self) -> None:
        installed = await self._d.db.call(bs.list_skills)
        self._installed = {s.manifest.name: s for s in installed}

    async def _validate_module(self, module: bytes) -> None:
        from naosd.control.wasm import validate_module

        report = await validate_module(self._d, module, ())
        if not report.get("ok"):
            raise InvalidRequest(f"skill module cannot run: {report.get('reason') or report}")

    # -- routing ---------------------------------------------------------------------
    def route(self, task: str) -> routing.RouteDecision:
        _check_task(task)
        llm = self._llm_route(task) if self.llm is not None else None
        try:
            return routing.route(task, self.catalog(), self.thresholds, llm)
        except routing.NoRoute as exc:
            if not self._no_llm_reason:
                raise
            raise routing.NoRoute(f"{exc.message} ({self._no_llm_reason})",
                                  exc.decision) from None

    def _llm_route(self, task: str) -> routing.LlmRoute:
        price_in, price_out = self.llm_prices
        return routing.LlmRoute(price_in, price_out,
                                PROMPT_OVERHEAD_TOKENS + routing.estimate_tokens(task),
                                EST_OUT_TOKENS)

    def llm_estimate(self, task: str) -> int:
        """What this task would cost on the LLM (the all-LLM comparison in stats)."""
        return self._llm_route(task).cost_micro

    # -- the pipeline ----------------------------------------------------------------
    async def execute(self, task: str, agent: str | None) -> dict[str, Any]:
        task_id = uuid.uuid4().hex
        try:
            decision = self.route(task)
        except routing.NoRoute as exc:
            self._remember(task_id, task, exc.decision)
            await self._deny(task_id, agent, exc, None)
            raise
        self._remember(task_id, task, decision)
        chosen = decision.chosen
        assert chosen is not None  # route() raises NoRoute otherwise
        reserve = self._reservation(chosen, task)
        trust: Event | None = None
        try:
            verdict, detail = await self.gate.evaluate(agent, reserve)
            trust = Event("trust.allow" if verdict.allow else "trust.deny", agent,
                          {**detail, "task_id": task_id}, actor="trust")
            if not verdict.allow:
                raise TrustDenied(verdict.reason)
            hold = self.cost.reserve(agent, reserve, _now())
        except NaosError as exc:  # trust_denied, budget_exceeded, budget_throttled, …
            await self._deny(task_id, agent, exc, chosen, trust)
            raise
        return await self._run(task_id, task, agent, chosen, hold, verdict, trust)

    def _remember(self, task_id: str, task: str, decision: routing.RouteDecision | None
                  ) -> None:
        scored = [c for c in decision.candidates if c.confidence > 0][:4] \
            if decision is not None else []  # in routing order: the cheapest first
        self.recent.append({
            "task_id": task_id, "task": task[:PREVIEW_CHARS],
            "scores": [{"name": c.name, "kind": c.kind.value,
                        "confidence": round(c.confidence, 3), "cleared": c.cleared}
                       for c in scored]})

    async def _run(self, task_id: str, task: str, agent: str | None, chosen: routing.Candidate,
                   hold: Hold, verdict: Decision, trust: Event | None) -> dict[str, Any]:
        estimate = self.llm_estimate(task) if chosen.kind is not routing.RouteKind.LLM else 0
        rec = _TaskRecord(task_id, agent, chosen, hold, trust)
        try:
            outcome = await self._handler(chosen)(task, chosen, agent)
        except _Charged as charged:  # ran and spent (fuel), then failed
            self.cost.settle(hold, charged.cost_micro, _now())
            await self._record(rec, charged.cost_micro, estimate, "failed",
                               {"error": charged.error.code})
            raise charged.error from None
        except BaseException as exc:
            self.cost.release(hold)
            code = exc.code if isinstance(exc, NaosError) else "internal"
            await self._record(rec, 0, estimate, "failed", {"error": code})
            raise
        if chosen.kind is routing.RouteKind.LLM:
            estimate = outcome.cost_micro
        self.cost.settle(hold, outcome.cost_micro, _now())
        await self._record(rec, outcome.cost_micro, estimate, "ok", {"trust": verdict.code},
                           estimated=outcome.estimated)
        return {"task_id": task_id, "agent": agent, "route": chosen.kind.value,
                "handler": chosen.name, "confidence": round(chosen.confidence, 4),
                "output": outcome.output, "cost_micro": outcome.cost_micro,
                "reserved_micro": hold.amount, "llm_estimate_micro": estimate,
                "estimated": outcome.estimated, "trust": verdict.code,
                **(outcome.detail or {})}

    def _reservation(self, chosen: routing.Candidate, task: str) -> int:
        match chosen.kind:
            case routing.RouteKind.SKILL:
                return chosen.price_micro
            case routing.RouteKind.WASM:
                return chosen.price_micro + -(-SKILL_FUEL * FUEL_PRICE_PER_MFUEL // 1_000_000)
            case _:
                assert self.llm is not None  # the LLM is a candidate only when configured
                return max(self.llm.estimate_cost_micro(task, EST_OUT_TOKENS),
                           chosen.price_micro)

    def _handler(self, chosen: routing.Candidate
                 ) -> Callable[[str, routing.Candidate, str | None], Awaitable[Outcome]]:
        match chosen.kind:
            case routing.RouteKind.SKILL:
                return self._run_builtin
            case routing.RouteKind.WASM:
                return self._run_wasm
            case _:
                return self._run_llm

    async def _run_builtin(self, task: str, chosen: routing.Candidate,
                           agent: str | None) -> Outcome:
        return Outcome(BUILTIN_BY_NAME[chosen.name].run(task), chosen.price_micro)

    async def _run_wasm(self, task: str, chosen: routing.Candidate,
                        agent: str | None) -> Outcome:
        from actors.messages import RunWasm
        from naosd.control.wasm import _ask_pool

        installed = self._installed.get(chosen.name)
        if installed is None:
            raise SkillFailed(f"skill {chosen.name!r} was removed while the task was routed")
        limits = {"fuel": SKILL_FUEL, "timeout_ms": SKILL_TIMEOUT_MS,
                  "price_micro_usd_per_mfuel": FUEL_PRICE_PER_MFUEL}
        msg = RunWasm(uuid.uuid4().hex, installed.module, task.encode(), limits, (), "")
        try:
            result = (await _ask_pool(self._d, msg, SKILL_TIMEOUT_MS / 1000 + 10)).result
        except NaosError as exc:
            if exc.code in WASM_RUN_ERRORS:  # a trapped run is charged its whole fuel budget
                raise _Charged(self._reservation(chosen, task), exc) from None
            raise
        cost = chosen.price_micro + int(result["cost_micro_usd"])
        if result["exit_code"] != 0:
            stderr = bytes(result["stderr"]).decode("utf-8", "replace").strip()[:500]
            raise _Charged(cost, SkillFailed(
                f"skill {chosen.name!r} exited with code {result['exit_code']}: {stderr}"))
        return Outcome(bytes(result["stdout"]).decode("utf-8", "replace"), cost,
                       detail={"fuel_used": result["fuel_used"]})

    async def _run_llm(self, task: str, chosen: routing.Candidate,
                       agent: str | None) -> Outcome:
        assert self.llm is not None
        result = await self.llm.complete(task, max_tokens=EST_OUT_TOKENS, agent=agent)
        return Outcome(result.text, int(result.cost_micro), bool(result.estimated),
                       detail={"model": result.model, "input_tokens": result.input_tokens,
                               "output_tokens": result.output_tokens})

    # -- recording -------------------------------------------------------------------
    async def _record(self, rec: _TaskRecord, cost: int, estimate: int, status: str,
                      extra: dict[str, Any], *, estimated: bool = False) -> None:
        chosen, hold = rec.chosen, rec.hold
        entry = bs.LedgerEntry(rec.task_id, rec.agent, chosen.kind.value, chosen.name, status,
                               hold.amount, cost, estimate, estimated)
        audit = Event("broker.execute", rec.agent, {
            "task_id": rec.task_id, "route": chosen.kind.value, "handler": chosen.name,
            "status": status, "cost_micro": cost, "reserved_micro": hold.amount, **extra})
        await self._write(entry, audit, rec.trust)

    async def _deny(self, task_id: str, agent: str | None, exc: Exception,
                    chosen: routing.Candidate | None, trust: Event | None = None) -> None:
        code = exc.code if isinstance(exc, NaosError) else "internal"
        message = exc.message if isinstance(exc, NaosError) else str(exc)
        audit = Event("broker.denied", agent, {
            "task_id": task_id, "error": code, "reason": message[:500],
            "route": chosen.kind.value if chosen else None,
            "handler": chosen.name if chosen else None})
        await self._write(None, audit, trust)

    async def flush(self) -> None:
        """Persist what the cost controller changed outside a task (set, reset)."""
        await self._write(None, None)

    async def _write(self, entry: bs.LedgerEntry | None, audit: Event | None,
                     trust: Event | None = None) -> None:
        events, budgets = self.cost.drain()
        first = (trust,) if trust is not None else ()
        await self.writer.write(bs.Record((*first, *events), tuple(budgets), entry, audit))


class _Charged(Exception):
    def __init__(self, cost_micro: int, error: NaosError) -> None:
        super().__init__(error.message)
        self.cost_micro = cost_micro
        self.error = error


@dataclass(frozen=True, slots=True)
class _TaskRecord:
    task_id: str
    agent: str | None
    chosen: routing.Candidate
    hold: Hold
    trust: Event | None


def build_broker(daemon: Daemon) -> Broker:
    """The broker with the daemon's trust gate and LLM service (no LLM configured: the
    LLM route is off and unmatched tasks fail with no_route, saying why)."""
    service = daemon.llm
    if service is None or not service.configured:
        reason = service.why_none if service is not None else "no LLM service"
        return Broker(daemon, gate=daemon.trust_gate, no_llm_reason=reason)
    config = service.estimate_config()
    prices = (config.price_input_per_1k, config.price_output_per_1k)
    return Broker(daemon, gate=daemon.trust_gate, llm=service,
                  llm_prices=prices if any(prices) else None)


def _now() -> datetime:
    return datetime.now(UTC)


def _check_task(task: str) -> None:
    if not task.strip():
        raise InvalidRequest("task is empty")
    if len(task) > MAX_TASK_CHARS:
        raise InvalidRequest(f"task is longer than {MAX_TASK_CHARS} characters")


def _check_digest(manifest: SkillManifest, module: bytes, sha256: str | None) -> str:
    if not module:
        raise InvalidRequest("skill module is empty")
    digest = hashlib.sha256(module).hexdigest()
    for source, want in (("--sha256", sha256), ("manifest.json sha256", manifest.sha256)):
        if want is not None and want.lower() != digest:
            raise InvalidRequest(
                f"skill module {manifest.module}: sha256 mismatch: {source} says {want.lower()}, "
                f"the module is {digest}; nothing was installed")
    return digest


def _skill_info(skill: routing.Skill, description: str, source: str) -> dict[str, Any]:
    return {"name": skill.name, "kind": skill.kind.value, "source": source,
            "description": description, "price_micro": skill.price_micro,
            "keywords": list(skill.keywords), "regexes": list(skill.regexes),
            "examples": list(skill.examples)}


def decision_json(decision: routing.RouteDecision) -> dict[str, Any]:
    chosen = decision.chosen
    return {
        "chosen": None if chosen is None else {"name": chosen.name, "kind": chosen.kind.value},
        "reason": decision.reason,
        "explain": decision.explain(),
        "candidates": [
            {"name": c.name, "kind": c.kind.value, "price_micro": c.price_micro,
             "confidence": round(c.confidence, 4), "threshold": c.threshold,
             "cleared": c.cleared, "near_miss": c.near_miss}
            for c in decision.candidates
        ],
        "ties": [c.name for c in decision.candidates
                 if chosen is not None and c is not chosen and c.cleared
                 and c.price_micro == chosen.price_micro],
    }
