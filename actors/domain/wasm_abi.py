"""The ``naos`` host module of the WASM guest ABI, as data (pure: stdlib only).

One table of the host functions a WASM guest may import, the codes they
return and which of them reach naosd's agent API over the agent's channel.
The engine (``actors.wasm.engine``) links them; agent definitions
(``actors.domain.definitions``) check grants against them; docs/wasm-abi.md
describes them for guest authors.
"""

from __future__ import annotations

from typing import Final

# name -> (number of i32 parameters, number of i32 results)
KV_FUNCTIONS: Final[dict[str, tuple[int, int]]] = {
    "log": (3, 1), "kv_get": (4, 1), "kv_set": (4, 1)}

# The agent API over the agent's channel: each takes a JSON request at
# (in_ptr, in_len) and writes its JSON reply at (out_ptr, out_cap).
CHANNEL_FUNCTIONS: Final[tuple[str, ...]] = (
    "llm_chat", "agent_ask", "agent_tell", "execute", "state_get", "state_set")

# Copies the held reply of the last channel call: (out_ptr, out_cap). It
# reveals nothing the guest was not already answered, so it is never granted
# on its own: it is linked whenever a channel function is.
REPLY_FUNCTION: Final = "reply"

HOST_FUNCTIONS: Final[dict[str, tuple[int, int]]] = {
    **KV_FUNCTIONS, **dict.fromkeys(CHANNEL_FUNCTIONS, (4, 1)), REPLY_FUNCTION: (2, 1)}

# What an agent definition may grant (every host function but ``reply``).
WASM_GRANTS: Final[tuple[str, ...]] = (*KV_FUNCTIONS, *CHANNEL_FUNCTIONS)

# Return codes of the naos host functions (>= 0 means success).
NAOS_OK: Final = 0
NAOS_NOT_FOUND: Final = -1
NAOS_FAULT: Final = -2
NAOS_TOO_LARGE: Final = -3
NAOS_INVALID: Final = -4
NAOS_HOST_ERROR: Final = -5
NAOS_NO_FUEL: Final = -6


def needs_grant(name: str, grants: frozenset[str]) -> bool:
    """Whether ``name`` is missing from what ``grants`` link (``reply`` comes
    with any channel function)."""
    if name == REPLY_FUNCTION:
        return not grants & set(CHANNEL_FUNCTIONS)
    return name not in grants


def linked(grants: frozenset[str]) -> list[str]:
    """The host functions a run under ``grants`` links, sorted."""
    return sorted(n for n in HOST_FUNCTIONS if not needs_grant(n, grants))
