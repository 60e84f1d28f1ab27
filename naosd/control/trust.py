"""Methods of the trust gate: ``axis.*`` (registry, verify, cache, policy)
and ``trust.check`` (the gate itself, audited)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from actors.domain.trust import Rating, TrustPolicy, TrustRecord, TrustSource, merge
from naosd.broker.trust_gate import TrustGate, from_cache, policy_doc, policy_from
from naosd.control.params import Bool, Int, Spec, Str
from naosd.control.roles import READ
from naosd.control.table import MethodTable
from naosd.errors import AxisUnavailable, AxisUnknownAuid, InvalidRequest, NotFound
from naosd.storage import trust as ts

if TYPE_CHECKING:
    from naosd.services import Services

METHODS = MethodTable("trust")
method = METHODS.method

SCORE = {"lo": 0, "hi": 1000}
AGENT = Str(max_len=64)


def gate(d: Services) -> TrustGate:
    g: TrustGate = d.trust_gate
    return g


def record_dict(record: TrustRecord | None, policy: TrustPolicy) -> dict[str, Any] | None:
    if record is None:
        return None
    return {"auid": record.auid, "t_score": record.t_score, "c_score": record.c_score,
            "tier": record.tier.name, "tier_label": record.tier.label,
            "rating": record.rating.value, "cap_micro": policy.cap_for(record.rating),
            "source": record.source.value,
            "verified_at": record.verified_at.strftime("%Y-%m-%dT%H:%M:%SZ")}


@method("axis.register", agent=AGENT, auid=Str(None, max_len=128),
        t_score=Int(None, **SCORE), c_score=Int(None, **SCORE))
async def axis_register(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Register an agent in the local registry (AUID and/or local scores)."""
    if (p["t_score"] is None) != (p["c_score"] is None):
        raise InvalidRequest("axis.register: give both t_score and c_score, or neither")
    reg = await d.db.call(lambda s: ts.register(s, p["agent"], p["auid"], p["t_score"],
                                                p["c_score"]))
    await d.db.notify()
    return reg.to_dict()


@method("axis.list", role=READ)
async def axis_list(d: Services, p: dict[str, Any]) -> list[dict[str, Any]]:
    """Every registration in the local registry (agent, AUID, local scores)."""
    regs = await d.db.call(ts.list_registrations)
    return [r.to_dict() for r in regs]


@method("axis.unregister", agent=AGENT)
async def axis_unregister(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Delete an agent's registration: its tasks are gated as an unregistered
    agent's from now on."""
    reg = await d.db.call(lambda s: ts.unregister(s, p["agent"]))
    await d.db.notify()
    return {"unregistered": p["agent"], "was": reg.to_dict()}


@method("axis.status", role=READ, agent=AGENT)
async def axis_status(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """An agent's registration, scores in use, effective policy and a preview."""
    g = gate(d)
    reg = await d.db.call(lambda s: ts.get_registration(s, p["agent"]))
    if reg is None:
        raise NotFound(f"agent {p['agent']!r} is not registered "
                       f"(naosctl axis register {p['agent']})")
    policy = await g.policy_for(p["agent"])
    try:
        found = await g.lookup(reg)
        record, axis_error = found.record, found.axis_error
    except AxisUnknownAuid as exc:
        record, axis_error = None, exc.message
    preview, _ = await g.evaluate(p["agent"], 0)
    return {"registration": reg.to_dict(), "record": record_dict(record, policy),
            "axis_error": axis_error, "policy": policy_doc(policy),
            "preview": {"allow": preview.allow, "code": preview.code, "reason": preview.reason},
            "axis": g.config.describe()}


@method("axis.verify", auid=Str(max_len=128))
async def axis_verify(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Ask AXIS about an AUID now (falls back to the cache and the registry)."""
    g = gate(d)
    auid = ts.check_auid(p["auid"])
    policy = await g.policy_for(None)
    regs = await d.db.call(lambda s: ts.registrations_for(s, auid))
    out: dict[str, Any] = {"auid": auid, "agents": [r.agent for r in regs], "axis_error": None}
    try:
        if auid.startswith(ts.LOCAL_PREFIX):
            raise AxisUnavailable(f"{auid} is a local-only AUID: AXIS is not asked")
        record: TrustRecord | None = await g.refresh(auid)
    except (AxisUnavailable, AxisUnknownAuid) as exc:
        out["axis_error"] = exc.message
        cached = await d.db.call(lambda s: ts.cache_get(s, auid))
        local = next((r for r in regs if r.has_scores), None)
        record = _fallback(cached, local)
    await d.db.audit("axis.verify", actor="trust", auid=auid,
                     source=record.source.value if record else None, error=out["axis_error"])
    return {**out, "record": record_dict(record, policy)}


def _fallback(cached: ts.Cached | None, local: ts.Registration | None) -> TrustRecord | None:
    if cached is not None:
        return from_cache(cached)
    if local is not None and local.t_score is not None and local.c_score is not None:
        return TrustRecord(local.auid, local.t_score, local.c_score,
                           ts.parse_ts(local.updated_at), TrustSource.LOCAL)
    return None


@method("axis.cache", clear=Bool(False))
async def axis_cache(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """The cached AXIS answers with their age; with clear, drop them all."""
    if p["clear"]:
        cleared = await d.db.call(ts.cache_clear)
        await d.db.notify()
        return {"cleared": cleared, "entries": []}
    ttl = gate(d).config.cache_ttl_s
    now = datetime.now(UTC)
    rows = await d.db.call(ts.cache_list)
    entries = []
    for row in rows:
        age = (now - ts.parse_ts(row.fetched_at)).total_seconds()
        entries.append({**row.to_dict(), "age_s": round(age, 1), "fresh": age <= ttl})
    return {"cleared": None, "entries": entries, "ttl_s": ttl}


@method("axis.policy_set", agent=Str(None, max_len=64), min_tier=Str(None, max_len=8),
        min_t_score=Int(None, **SCORE), min_rating=Str(None, max_len=8),
        caps=Spec(dict, None), reset=Bool(False))
async def axis_policy_set(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Change the global policy (or an agent's override); reset drops it."""
    scope = p["agent"] or ts.GLOBAL
    if p["reset"]:
        await d.db.call(lambda s: ts.set_policy(s, scope, None))
        await d.db.notify()
        return await axis_policy_show(d, {"agent": p["agent"]})
    current = await d.db.call(lambda s: ts.get_policy(s, scope)) or {}
    doc = dict(current)
    for key in ("min_tier", "min_t_score", "min_rating"):
        if p[key] is not None:
            doc[key] = p[key]
    if p["caps"] is not None:
        doc["caps"] = {**(doc.get("caps") or {}), **p["caps"]}
    stored = policy_doc(policy_from(doc))  # validates; raises InvalidRequest naming the field
    await d.db.call(lambda s: ts.set_policy(s, scope, stored))
    await d.db.notify()
    return await axis_policy_show(d, {"agent": p["agent"]})


@method("axis.policy_show", role=READ, agent=Str(None, max_len=64))
async def axis_policy_show(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """The global policy, an agent's override and the effective (stricter) one."""
    base = policy_from(await d.db.call(lambda s: ts.get_policy(s, ts.GLOBAL)))
    override_doc = (await d.db.call(lambda s: ts.get_policy(s, p["agent"]))
                    if p["agent"] else None)
    effective = merge(base, policy_from(override_doc) if override_doc else None)
    full = {r.value: effective.cap_for(r) for r in Rating}
    return {"agent": p["agent"], "global": policy_doc(base), "override": override_doc,
            "effective": {**policy_doc(effective), "caps": full},
            "fail_open": gate(d).config.fail_open}


@method("trust.check", agent=Str(None, max_len=64), cost_micro=Int(0, lo=0, hi=2**62))
async def trust_check(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Run the gate for a task of ``agent`` costing ``cost_micro`` (audited);
    raises trust_denied when it denies."""
    decision = await gate(d).check(p["agent"], p["cost_micro"])
    return {"allow": decision.allow, "code": decision.code, "reason": decision.reason,
            "tier": decision.tier.name if decision.tier else None,
            "rating": decision.rating.value if decision.rating else None,
            "cap_micro": decision.cap_micro}
