"""Per-run limits and the fuel tariff of the WASM sandbox (pure: no wasmtime, no I/O).

A :class:`Limits` value is what a manifest or the daemon config turns into before a
run; :func:`price_micro_usd` is the whole cost model. Money is integer micro-dollars.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from naosd.errors import ConfigError

KIB = 1024
MIB = 1024 * KIB
WASM_PAGE = 64 * KIB
MFUEL = 1_000_000

# The most fuel a Store takes. There is no unmetered mode: after a trap (a timeout
# included) wasmtime under-reports the fuel used (0 after a timeout, measured), so
# every trapped run is charged its whole budget; size ``fuel`` accordingly.
MAX_FUEL = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Limits:
    """What one run may use; every field has a safe default.

    ``fuel`` is the instruction budget, charged in full after any trap (a timeout
    included), so keep it near what ``timeout_ms`` allows (a tight loop burns about
    8e9 fuel per second here). ``memory_bytes`` caps each linear memory; C and Zig
    guests start with 16 MiB, so keep it at 32 MiB or more for them.
    ``price_micro_usd_per_mfuel`` is the tariff: integer micro-dollars per million fuel.
    """

    fuel: int = 2_000_000_000
    memory_bytes: int = 64 * MIB
    tables: int = 4
    table_elements: int = 100_000
    timeout_ms: int = 10_000
    module_bytes: int = 16 * MIB
    stdin_bytes: int = 4 * MIB
    stdout_bytes: int = 4 * MIB
    stderr_bytes: int = 256 * KIB
    kv_key_bytes: int = 256
    kv_value_bytes: int = 64 * KIB
    log_bytes: int = 4 * KIB
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


def _check_field(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"limit {name} must be an int, got {value!r}")
    low = _MINIMUM.get(name, 1)
    if value < low:
        raise ConfigError(f"limit {name} must be >= {low}, got {value}")
    if name == "fuel" and value > MAX_FUEL:
        raise ConfigError(f"limit fuel must be <= {MAX_FUEL}")


def price_micro_usd(fuel: int, price_per_mfuel: int) -> int:
    """Cost of ``fuel`` units at ``price_per_mfuel`` micro-dollars per million, rounded up.

    Raises ValueError for negative inputs. Rounding up means any metered work with a
    non-zero price costs at least one micro-dollar.
    """
    if fuel < 0 or price_per_mfuel < 0:
        raise ValueError(f"fuel and price must be >= 0, got {fuel}, {price_per_mfuel}")
    return -(-fuel * price_per_mfuel // MFUEL)
