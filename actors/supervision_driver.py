"""The loop both supervision shells (``actors.supervisor``, ``actors.root``)
run around the pure machine: feed an event, hand each effect to the shell,
then feed the events the shell raised while performing them (an unplaceable
start, a stop with no process to stop), so the machine never waits for a
message the shell would have to send to itself."""

from __future__ import annotations

from collections.abc import Callable

from actors.domain import supervision as sv
from naosd.errors import NaosError


class MachineDriver:
    """One supervisor's state machine, its shell's effect performer and a queue."""

    def __init__(self, state: sv.SupState, perform: Callable[[sv.Effect], None],
                 warn: Callable[[str], None]) -> None:
        self.state = state
        self._perform = perform
        self._warn = warn
        self._queue: list[sv.Event] = []

    def follow(self, event: sv.Event) -> None:
        """Feed ``event`` once the effects being performed are done."""
        self._queue.append(event)

    def apply(self, event: sv.Event, *, strict: bool = False) -> list[sv.Audit]:
        """Feed ``event`` and what follows from it; returns the audit rows to
        write (the shell writes them last). The machine's refusal of a
        follow-up is logged; of ``event`` too, unless ``strict`` (raised)."""
        audits: list[sv.Audit] = []
        events = [event]
        while events:
            current = events.pop(0)
            try:
                self.state, effects = sv.handle(self.state, current)
            except NaosError as exc:
                if strict and current is event:
                    raise
                self._warn(f"{type(current).__name__} ignored: {exc}")
                continue
            for effect in effects:
                if isinstance(effect, sv.Audit):
                    audits.append(effect)
                else:
                    self._perform(effect)
            events += self._queue
            self._queue.clear()
        return audits
