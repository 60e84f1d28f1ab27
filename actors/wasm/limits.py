"""Per-run limits and the fuel tariff of the WASM sandbox (pure: no wasmtime, no I/O).

A :class:`Limits` value is what a manifest or the daemon config turns into before a
run; :func:`price_micro_usd` is the whole cost model. Money is integer micro-dollars.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from naosd.errors import ConfigError, InvalidRequest

KIB = 1024
MIB = 1024 * KIB
WASM_PAGE = 64 * KIB
MFUEL = 1_000_000

# The most fuel a Store takes. There is no unmetered mode: after a trap (a timeout
# included) wasmtime under-reports the fuel used (0 after a timeout, measured), so
# every trapped run is charged its whole budget; size ``fuel`` accordingly.
MAX_FUEL = 2**63 - 1

# Ceilings: a limit may be lowered, never raised past these. Module and input
# travel in one actor frame (naosd.runtime.frames.MAX_ACTOR_FRAME, 32 MiB) and the
# output in its reply; compile time grows with the function count (~0.05-0.2 ms per
# tiny function here: 500,000 of them compiled for a minute).
MAX_MODULE_BYTES = 16 * MIB
MAX_STDIN_BYTES = 8 * MIB
MAX_OUTPUT_BYTES = 8 * MIB
MAX_FUNCTIONS = 50_000
MAX_COMPILE_TIMEOUT_MS = 120_000
# A channel call's request and reply each travel in one channel frame
# (naosd.protocol.DEFAULT_MAX_FRAME, 16 MiB) and sit whole in host memory.
MAX_CALL_BYTES = 8 * MIB


@dataclass(frozen=True, slots=True)
class Limits:
    """What one run may use; every field has a safe default.

    ``fuel`` is the instruction budget, charged in full after any trap (a timeout
    included), so keep it near what ``timeout_ms`` allows (a tight loop burns about
    8e9 fuel per second here). ``memory_bytes`` caps each linear memory; C and Zig
    guests start with 16 MiB, so keep it at 32 MiB or more for them.
    ``price_micro_usd_per_mfuel`` is the tariff: integer micro-dollars per million fuel.
    ``functions`` caps the functions a module defines (checked from its section
    headers before compiling) and ``compile_timeout_ms`` the time a compile may
    take (then it is abandoned, see ``WasmCompileTimeout``). Size and compile
    limits have ceilings (``_MAXIMUM``): a caller may lower them, not raise them.
    """

    fuel: int = 2_000_000_000
    memory_bytes: int = 64 * MIB
    tables: int = 4
    table_elements: int = 100_000
    timeout_ms: int = 10_000
    module_bytes: int = MAX_MODULE_BYTES
    functions: int = MAX_FUNCTIONS
    compile_timeout_ms: int = 10_000
    stdin_bytes: int = 4 * MIB
    stdout_bytes: int = 4 * MIB
    stderr_bytes: int = 256 * KIB
    kv_key_bytes: int = 256
    kv_value_bytes: int = 64 * KIB
    log_bytes: int = 4 * KIB
    call_bytes: int = MIB
    reply_bytes: int = MIB
    host_call_fuel: int = 1_000
    price_micro_usd_per_mfuel: int = 1

    def __post_init__(self) -> None:
        """Raises ConfigError when a field is not an int in its allowed range."""
        for f in fields(self):
            _check_field(f.name, getattr(self, f.name))
        if self.memory_bytes < WASM_PAGE:
            raise ConfigError(f"memory_bytes must be at least one page ({WASM_PAGE})")


_MINIMUM = {"price_micro_usd_per_mfuel": 0, "host_call_fuel": 0, "stdin_bytes": 0,
            "stdout_bytes": 0, "stderr_bytes": 0, "table_elements": 0, "tables": 0}
_MAXIMUM = {"fuel": MAX_FUEL, "module_bytes": MAX_MODULE_BYTES, "functions": MAX_FUNCTIONS,
            "compile_timeout_ms": MAX_COMPILE_TIMEOUT_MS, "stdin_bytes": MAX_STDIN_BYTES,
            "stdout_bytes": MAX_OUTPUT_BYTES, "stderr_bytes": MAX_OUTPUT_BYTES,
            "call_bytes": MAX_CALL_BYTES, "reply_bytes": MAX_CALL_BYTES}


def _check_field(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"limit {name} must be an int, got {value!r}")
    low = _MINIMUM.get(name, 1)
    if value < low:
        raise ConfigError(f"limit {name} must be >= {low}, got {value}")
    high = _MAXIMUM.get(name)
    if high is not None and value > high:
        raise ConfigError(f"limit {name} must be <= {high}, got {value}")


def price_micro_usd(fuel: int, price_per_mfuel: int) -> int:
    """Cost of ``fuel`` units at ``price_per_mfuel`` micro-dollars per million, rounded up.

    Raises ValueError for negative inputs. Rounding up means any metered work with a
    non-zero price costs at least one micro-dollar.
    """
    if fuel < 0 or price_per_mfuel < 0:
        raise ValueError(f"fuel and price must be >= 0, got {fuel}, {price_per_mfuel}")
    return -(-fuel * price_per_mfuel // MFUEL)


def job_budget_s(spec: Mapping[str, Any], *, run: bool) -> float:
    """Seconds a sandbox job under the limits ``spec`` may take: its compile
    deadline, plus the run's timeout for a run. A spec that does not make valid
    Limits counts as the defaults (the job then fails at once anyway)."""
    try:
        limits = Limits(**spec)
    except (TypeError, ConfigError):
        limits = Limits()
    return (limits.compile_timeout_ms + (limits.timeout_ms if run else 0)) / 1000


def limits_from(spec: dict[str, Any]) -> Limits:
    """``Limits`` from a dict; InvalidRequest names a bad field."""
    try:
        return Limits(**spec)
    except TypeError as exc:
        raise InvalidRequest(f"unknown WASM limit: {exc}") from None
    except ConfigError as exc:
        raise InvalidRequest(f"bad WASM limit: {exc.message}") from None


def wasm_limits(config: dict[str, Any]) -> dict[str, int]:
    """Limits for a WASM agent from its config: ``fuel``, ``memory_mb``,
    ``timeout_s``, and any other field of ``actors.wasm.Limits`` under
    ``limits`` (e.g. ``{"limits": {"stdout_bytes": 65536}}``)."""
    extra = config.get("limits", {})
    limits: dict[str, int] = dict(extra) if isinstance(extra, dict) else {}
    if "fuel" in config:
        limits["fuel"] = int(config["fuel"])
    if "memory_mb" in config:
        limits["memory_bytes"] = int(float(config["memory_mb"]) * 1024 * 1024)
    if "timeout_s" in config:
        limits["timeout_ms"] = int(float(config["timeout_s"]) * 1000)
    return limits
