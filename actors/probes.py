"""Handler probes: before naosd commits an agent's definition, a throwaway
agent process (never naosd's own: naosd holds secrets) loads its handler and
says whether it loads. This is the supervisor shell's bookkeeping of the
probes in flight; it answers the asker exactly once per probe.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from thespian.actors import ActorExitRequest

from actors.base import error_reply
from actors.messages import ProbeAgent, Reply
from naosd.errors import InvalidRequest, NaosError, RequestTimeout
from naosd.runtime.procs import process_alive


@dataclass(slots=True)
class _Probe:
    address: Any
    asker: Any
    request: ProbeAgent
    pid: int | None = None


class Probes:
    """Probes in flight, by the address of their process."""

    def __init__(self, send: Callable[[Any, Any], None]) -> None:
        self._send = send
        self._open: list[_Probe] = []

    def add(self, address: Any, asker: Any, request: ProbeAgent) -> None:
        self._open.append(_Probe(address, asker, request))

    def spawned(self, address: Any, pid: int) -> None:
        probe = self._find(address)
        if probe is not None:
            probe.pid = pid

    def answer(self, address: Any, error: str) -> None:
        """The probe loaded the handler (``error`` empty) or could not."""
        probe = self._take(address)
        if probe is None:
            return
        name = probe.request.definition.name
        if error:
            self._fail(probe, InvalidRequest(f"agent {name!r} cannot be loaded: {error}"))
        else:
            self._send(probe.asker, Reply(probe.request.request_id, True))

    def exited(self, address: Any) -> bool:
        """A probe's process is gone: True if it was a probe."""
        probe = self._take(address)
        if probe is not None:
            name = probe.request.definition.name
            self._fail(probe, InvalidRequest(
                f"agent {name!r} cannot be loaded: its process died while loading the handler"))
        return probe is not None

    def sweep(self) -> None:
        for probe in [p for p in self._open if p.pid is not None and not process_alive(p.pid)]:
            self.exited(probe.address)

    def timed_out(self, address: Any) -> None:
        probe = self._take(address)
        if probe is None:
            return
        if probe.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(probe.pid, signal.SIGKILL)
        self._send(probe.address, ActorExitRequest())
        name, limit = probe.request.definition.name, probe.request.timeout_s
        self._fail(probe, RequestTimeout(
            f"agent {name!r}: its handler did not finish loading within {limit:g}s"))

    def _fail(self, probe: _Probe, exc: NaosError) -> None:
        self._send(probe.asker, error_reply(probe.request, exc))

    def _find(self, address: Any) -> _Probe | None:
        # by ==, like every address lookup: equal addresses need not hash alike
        return next((p for p in self._open if p.address == address), None)

    def _take(self, address: Any) -> _Probe | None:
        probe = self._find(address)
        if probe is not None:
            self._open.remove(probe)
        return probe
