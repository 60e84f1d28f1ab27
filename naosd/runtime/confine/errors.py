"""Errors of agent confinement (declared in the leaf ``naosd.errors.agents``)::

    ConfinementError (confinement_error, 1)
    ├── ConfinementUnavailable (confinement_unavailable, 1)  the kernel lacks a mechanism
    │                                                        that "full" confinement needs
    └── ConfinementFailed (confinement_failed, 1)            a mechanism is there but
                                                             applying it failed

A policy that is wrong in itself (a relative path, a bad limit, a reserved
environment variable) is an ``InvalidRequest``, not one of these.
"""

from __future__ import annotations

from typing import Final

from naosd.errors.agents import ConfinementError, ConfinementFailed, ConfinementUnavailable

# A confined child whose bootstrap could not apply its confinement exits with
# this status before any agent code runs (and says why on its stderr).
EXIT_CONFINEMENT_FAILED: Final = 121


__all__ = ["EXIT_CONFINEMENT_FAILED", "ConfinementError", "ConfinementFailed",
           "ConfinementUnavailable"]
