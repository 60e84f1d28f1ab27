"""Errors of agent confinement, under ``naosd.errors.NaosError``::

    ConfinementError (confinement_error, 1)
    ├── ConfinementUnavailable (confinement_unavailable, 1)  the kernel lacks a mechanism
    │                                                        that "full" confinement needs
    └── ConfinementFailed (confinement_failed, 1)            a mechanism is there but
                                                             applying it failed

A policy that is wrong in itself (a relative path, a bad limit, a reserved
environment variable) is an ``InvalidRequest``, not one of these.
"""

from __future__ import annotations

from typing import ClassVar, Final

from naosd.errors import NaosError

# A confined child whose bootstrap could not apply its confinement exits with
# this status before any agent code runs (and says why on its stderr).
EXIT_CONFINEMENT_FAILED: Final = 121


class ConfinementError(NaosError):
    code: ClassVar[str] = "confinement_error"


class ConfinementUnavailable(ConfinementError):
    """Raised before a child starts: this kernel or platform has no such
    mechanism (unlike ConfinementFailed, nothing was tried)."""

    code = "confinement_unavailable"


class ConfinementFailed(ConfinementError):
    """Raised inside the child when a mechanism the kernel has refused the
    policy (unlike ConfinementUnavailable, the probe said it was there)."""

    code = "confinement_failed"
