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
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

from actors.domain import routing
from actors.domain.skill_manifest import SkillManifest, parse_manifest
from naosd.broker.builtin_skills import BUILTIN, BUILTIN_BY_NAME
from naosd.broker.cost import CostController
from naosd.broker.ledger_writer import LedgerWriter
from naosd.broker.spend import Charge, Charged, Spender, Spent, TrustCheck
from naosd.errors import Conflict, InvalidRequest, NaosError, NoRoute, SkillFailed
from naosd.storage import ledger as bs

if TYPE_CHECKING:
    from naosd.broker.llm.service import LlmService
    from naosd.storage.db import AsyncStore

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


class WasmRunner(Protocol):
    """:class:`naosd.runtime.sandbox.Sandbox`."""

    async def run(self, module: bytes, stdin: bytes, limits: dict[str, int],
                  grants: tuple[str, ...] = (), agent: str = "") -> dict[str, Any]: ...

    async def validate(self, module: bytes, grants: tuple[str, ...] = (),
                       limits: dict[str, int] | None = None) -> dict[str, Any]: ...


class LlmCompleter(Protocol):
    """:class:`naosd.broker.llm.service.LlmService`."""

    async def complete(self, prompt: str, *, max_tokens: int | None = None,
                       agent: str | None = None) -> Any: ...

    def estimate_cost_micro(self, prompt: str, max_tokens: int | None) -> int: ...


class Broker:
    def __init__(self, db: AsyncStore, sandbox: WasmRunner,
                 thresholds: Callable[[], routing.Thresholds], *, gate: TrustCheck,
                 llm: LlmCompleter | None = None, llm_prices: tuple[int, int] | None = None,
                 no_llm_reason: str = "") -> None:
        self._db = db
        self._sandbox = sandbox
        self._thresholds = thresholds
        self.gate = gate
        self.llm = llm
        self.llm_prices = llm_prices or REFERENCE_LLM_PRICES
        self.llm_prices_source = "configured" if llm_prices else "reference"
        self._no_llm_reason = no_llm_reason
        self.cost = CostController()
        self.writer = LedgerWriter(db)
        self.spender = Spender(gate, self.cost, self.writer)
        self._installed: dict[str, bs.InstalledSkill] = {}
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT)
        """The last routing decisions with their scores and a task preview, for
        the dashboard; in memory only: task text never enters the audit log."""

    @property
    def thresholds(self) -> routing.Thresholds:
        """From the current configuration (a reload changes them at once)."""
        return self._thresholds()

    async def start(self) -> None:
        """Load the installed skills and the budgets."""
        await self._reload_catalog()
        self.cost.load(await self._db.call(bs.list_budgets))

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
        result = await self._db.call(
            lambda s: bs.install_skill(s, manifest, module, digest, replace=replace))
        await self._reload_catalog()
        await self._db.notify()
        return result

    async def remove(self, name: str) -> None:
        await self._db.call(lambda s: bs.remove_skill(s, name))
        await self._reload_catalog()
        await self._db.notify()

    async def _reload_catalog(self) -> None:
        installed = await self._db.call(bs.list_skills)
        self._installed = {s.manifest.name: s for s in installed}

    async def _validate_module(self, module: bytes) -> None:
        report = await self._sandbox.validate(module)
        if not report.get("ok"):
            raise InvalidRequest(f"skill module cannot run: {report.get('reason') or report}")

    # -- routing ---------------------------------------------------------------------
    def route(self, task: str) -> routing.RouteDecision:
        _check_task(task)
        llm = self._llm_route(task) if self.llm is not None else None
        try:
            return routing.route(task, self.catalog(), self.thresholds, llm)
        except NoRoute as exc:
            if not self._no_llm_reason:
                raise
            raise NoRoute(f"{exc.message} ({self._no_llm_reason})",
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
    async def execute(self, task: str, agent: str | None, *, route: str | None = None
                      ) -> dict[str, Any]:
        """Route (or take the pinned ``route``), then run through the spender's
        gates; see :mod:`naosd.broker.spend`."""
        task_id = uuid.uuid4().hex
        try:
            decision = self.route(task) if route is None else self.pinned(task, route)
        except NoRoute as exc:
            self._remember(task_id, task, exc.decision)
            await self.spender.deny(agent, None, exc, task_id=task_id)
            raise
        self._remember(task_id, task, decision)
        chosen = decision.chosen
        assert chosen is not None  # route() raises NoRoute otherwise
        estimate = self.llm_estimate(task) if chosen.kind is not routing.RouteKind.LLM else 0
        charge = Charge(chosen.kind.value, chosen.name, self._reservation(chosen, task),
                        "broker.execute", estimate_micro=estimate, task_id=task_id)

        async def work(granted: int) -> Spent:
            return await self._handler(chosen)(task, chosen, agent)

        spent, receipt = await self.spender.charge(agent, charge, work)
        return {"task_id": task_id, "agent": agent, "route": chosen.kind.value,
                "handler": chosen.name, "confidence": round(chosen.confidence, 4),
                "output": spent.result, "cost_micro": receipt.cost_micro,
                "reserved_micro": receipt.granted_micro,
                "llm_estimate_micro": estimate if spent.estimate_micro is None
                else spent.estimate_micro,
                "estimated": spent.estimated, "trust": receipt.verdict,
                "pinned": route is not None, **spent.detail}

    def pinned(self, task: str, route: str) -> routing.RouteDecision:
        _check_task(task)
        llm = self._llm_route(task) if self.llm is not None else None
        return routing.pinned(task, route, self.catalog(), llm)

    def _remember(self, task_id: str, task: str, decision: routing.RouteDecision | None
                  ) -> None:
        scored = [c for c in decision.candidates if c.confidence > 0][:4] \
            if decision is not None else []  # in routing order: the cheapest first
        self.recent.append({
            "task_id": task_id, "task": task[:PREVIEW_CHARS],
            "scores": [{"name": c.name, "kind": c.kind.value,
                        "confidence": round(c.confidence, 3), "cleared": c.cleared}
                       for c in scored]})

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
                 ) -> Callable[[str, routing.Candidate, str | None], Awaitable[Spent]]:
        match chosen.kind:
            case routing.RouteKind.SKILL:
                return self._run_builtin
            case routing.RouteKind.WASM:
                return self._run_wasm
            case _:
                return self._run_llm

    async def _run_builtin(self, task: str, chosen: routing.Candidate,
                           agent: str | None) -> Spent:
        return Spent(BUILTIN_BY_NAME[chosen.name].run(task), chosen.price_micro)

    async def _run_wasm(self, task: str, chosen: routing.Candidate,
                        agent: str | None) -> Spent:
        installed = self._installed.get(chosen.name)
        if installed is None:
            raise SkillFailed(f"skill {chosen.name!r} was removed while the task was routed")
        limits = {"fuel": SKILL_FUEL, "timeout_ms": SKILL_TIMEOUT_MS,
                  "price_micro_usd_per_mfuel": FUEL_PRICE_PER_MFUEL}
        try:
            result = await self._sandbox.run(installed.module, task.encode(), limits)
        except NaosError as exc:
            if exc.code in WASM_RUN_ERRORS:  # a trapped run is charged its whole fuel budget
                raise Charged(self._reservation(chosen, task), exc) from None
            raise
        cost = chosen.price_micro + int(result["cost_micro_usd"])
        if result["exit_code"] != 0:
            stderr = bytes(result["stderr"]).decode("utf-8", "replace").strip()[:500]
            raise Charged(cost, SkillFailed(
                f"skill {chosen.name!r} exited with code {result['exit_code']}: {stderr}"))
        return Spent(bytes(result["stdout"]).decode("utf-8", "replace"), cost,
                     detail={"fuel_used": result["fuel_used"]})

    async def _run_llm(self, task: str, chosen: routing.Candidate,
                       agent: str | None) -> Spent:
        assert self.llm is not None
        result = await self.llm.complete(task, max_tokens=EST_OUT_TOKENS, agent=agent)
        return Spent(result.text, int(result.cost_micro), bool(result.estimated),
                     detail={"model": result.model, "input_tokens": result.input_tokens,
                             "output_tokens": result.output_tokens},
                     estimate_micro=int(result.cost_micro))

    async def flush(self) -> None:
        """Persist what the cost controller changed outside a task (set, reset)."""
        await self.spender.write(None, None)

    async def drop_budget(self, scope: str) -> bool:
        """Forget ``scope``'s budget, in memory and on disk (with its
        ``cost.removed`` audit row); whether there was one."""
        if not self.cost.remove(scope):
            return False
        await self.flush()  # every earlier write of the budget row lands first
        await self._db.call(lambda s: bs.delete_budget(s, scope))
        return True


def build_broker(db: AsyncStore, sandbox: WasmRunner,
                 thresholds: Callable[[], routing.Thresholds], *, gate: TrustCheck,
                 llm: LlmService | None) -> Broker:
    """The broker with the trust gate and the LLM service (no LLM configured: the LLM
    route is off and unmatched tasks fail with no_route, saying why)."""
    if llm is None or not llm.configured:
        reason = llm.why_none if llm is not None else "no LLM service"
        return Broker(db, sandbox, thresholds, gate=gate, no_llm_reason=reason)
    config = llm.estimate_config()
    prices = (config.price_input_per_1k, config.price_output_per_1k) if config else (0, 0)
    return Broker(db, sandbox, thresholds, gate=gate, llm=llm,
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
