"""NaosActor: the base of every naos actor (the one Thespian subclass point).

What it adds to Thespian's ``ActorTypeDispatcher``:

* the process dies with its parent: ``PR_SET_PDEATHSIG(SIGKILL)`` is armed in
  ``__init__`` (naosd's process hooks arm it even earlier, this is the belt to
  their braces);
* an exception in a handler becomes an error :class:`Reply` to the sender
  (the error's wire code for a ``NaosError``, else ``"internal"``) instead of
  Thespian's retry-once-then-``PoisonMessage``; the actor keeps running;
* the supervision protocol every child speaks: ``InitChild`` -> ``ChildPid``,
  ``Crash`` -> ``os._exit(1)``, and ``Ping`` -> ``{"pid", "name", ...}``;
* :meth:`ask_port`: a request to naosd through its port (the one way an
  actor reaches storage and daemon services), the reply handed to a
  continuation (an actor never blocks);
* :meth:`on_start`, a hook that runs once before the first message (actors
  cannot send or create children from ``__init__``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from thespian.actors import ActorTypeDispatcher

from actors.messages import (
    ChildPid,
    Crash,
    InitChild,
    Ping,
    PortReply,
    PortRequest,
    Reply,
    Request,
    new_request_id,
)
from naosd.errors import InvalidRequest, NaosError, Unavailable
from naosd.runtime.procs import get_pdeathsig, set_pdeathsig


def error_reply(request: Request, exc: BaseException) -> Reply:
    """The error ``Reply`` that answers ``request`` failing with ``exc``."""
    if isinstance(exc, NaosError):
        return Reply(request.request_id, False, error_code=exc.code, message=str(exc))
    return Reply(
        request.request_id,
        False,
        error_code="internal",
        message=f"{type(exc).__name__}: {exc}",
    )


class NaosActor(ActorTypeDispatcher):  # type: ignore[misc]  # Thespian is untyped
    """Base class: PDEATHSIG, error replies, supervision protocol, Ping."""

    def __init__(self) -> None:
        super().__init__()
        set_pdeathsig()
        self.name: str = type(self).__name__
        self._started = False
        self.port: Any = None  # naosd's port address, from this actor's init message
        self._awaiting: dict[str, Callable[[PortReply], None]] = {}

    def receiveMessage(self, message: Any, sender: Any) -> None:
        """Dispatch by type; turn a handler's exception into an error reply."""
        try:
            if not self._started:
                self._started = True
                self.on_start()
            super().receiveMessage(message, sender)
        except Exception as exc:  # noqa: BLE001 - the actor must outlive its handlers
            self._handler_failed(message, sender, exc)

    def on_start(self) -> None:
        """Hook: runs once, before the first message is handled."""

    def reply(self, sender: Any, request: Request, result: Any = None) -> None:
        """Send the success ``Reply`` to ``request``."""
        self.send(sender, Reply(request.request_id, True, result))

    def ask_port(self, kind: type[PortRequest], then: Callable[[PortReply], None], /,
                 **fields: Any) -> str:
        """Send naosd a ``kind`` request; ``then(reply)`` runs when it answers.

        Returns the request id.  Raises ``Unavailable`` when this actor was
        not given the port's address."""
        if self.port is None:
            raise Unavailable(f"{self.name} has no port to naosd")
        request = kind(new_request_id(), self.myAddress, **fields)
        self._awaiting[request.request_id] = then
        self.send(self.port, request)
        return request.request_id

    def receiveMsg_PortReply(self, msg: PortReply, sender: Any) -> None:
        then = self._awaiting.pop(msg.request_id, None)
        if then is not None:
            then(msg)

    def receiveMsg_Ping(self, msg: Ping, sender: Any) -> None:
        self.reply(sender, msg, self.describe())

    def receiveMsg_InitChild(self, msg: InitChild, sender: Any) -> None:
        self.name = msg.name
        self.send(sender, ChildPid(msg.name, os.getpid()))

    def receiveMsg_Crash(self, msg: Crash, sender: Any) -> None:
        os._exit(1)

    def receiveUnrecognizedMessage(self, message: Any, sender: Any) -> None:
        if isinstance(message, Request):
            raise InvalidRequest(f"{self.name} does not handle {type(message).__name__}")

    def describe(self) -> dict[str, Any]:
        """Ping's result: who answers, from which process."""
        return {
            "name": self.name,
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "pdeathsig": get_pdeathsig(),
        }

    def _handler_failed(self, message: Any, sender: Any, exc: Exception) -> None:
        if isinstance(message, Request):
            self.send(sender, error_reply(message, exc))
            return
        self.logger().error(
            "%s failed on %s: %s", self.name, type(message).__name__, exc, exc_info=exc
        )
