"""Authenticated, bounded frames for Thespian's TCP transport.

Thespian frames a message as ``b"<length>>" + body`` and, as shipped, buffers
whatever length a peer announces before looking at the body: another local
user streamed 374 MB into an actor that way. Here the body is::

    tag(32) || mac(32) || pickle

* ``tag = HMAC-SHA256(length_key, b"<length>")`` authenticates the announced
  length. The receiver checks it as soon as the first 32 body bytes are in,
  so a peer without the secret gets at most ``MAX_HEADER + TAG_SIZE`` bytes
  buffered before its connection is refused.
* ``mac = HMAC-SHA256(secret, pickle)`` is checked before ``pickle.loads``.
* No frame may announce more than :data:`MAX_ACTOR_FRAME` bytes (refused at
  the header, and refused by :meth:`AuthenticatedPickle.dumps` on the sending
  side, so a message that cannot travel fails where it is sent).

:class:`FrameBuffer` is a push parser with the interface of Thespian's
``streamBuffer.ReceiveBuffer``; it does no I/O. A refused frame makes the
buffer "done" with no message: Thespian then answers ``ACK+DATAERR`` (or, on
an outgoing connection waiting for its ACK, retries) and closes the socket.

:func:`bound_pending_connections` wraps the transport's accept so that at
most :data:`MAX_PENDING_CONNECTIONS` accepted connections per process are
waiting for their first frame; beyond that the oldest is closed (a frame
from a peer with the secret completes in the read that follows its accept).
"""

from __future__ import annotations

import functools
import hmac
import logging
import pickle
import time
from collections.abc import Callable
from typing import Any

from naosd.errors import FrameTooLarge

log = logging.getLogger(__name__)

MIB = 1 << 20
MAX_ACTOR_FRAME = 32 * MIB
"""Largest frame body (tag + MAC + pickle). A WASM run (a module of at most
16 MiB and 8 MiB of input) fits with room to spare."""
TAG_SIZE = 32
MAC_SIZE = 32
MAX_HEADER = len(str(MAX_ACTOR_FRAME)) + 1  # the digits and the ">"
MAX_PENDING_CONNECTIONS = 32
_TAG_CACHE = 4096
_LENGTH_KEY_LABEL = b"naos actor frame length"


class FrameRejected(ValueError):
    """A transport frame that failed a check; it was never unpickled."""


class AuthenticatedPickle:
    """Stands in for the ``pickle`` module inside Thespian's TCP transport."""

    def __init__(self, secret: bytes, max_frame: int = MAX_ACTOR_FRAME) -> None:
        self._secret = secret
        self._length_key = hmac.digest(secret, _LENGTH_KEY_LABEL, "sha256")
        self._tags: dict[int, bytes] = {}  # sizes repeat (ACKs, small requests)
        self.max_frame = max_frame

    def _mac(self, data: bytes | bytearray | memoryview) -> bytes:
        return hmac.digest(self._secret, data, "sha256")

    def length_tag(self, size: int) -> bytes:
        """The tag that proves a peer with the secret announced ``size``."""
        tag = self._tags.get(size)
        if tag is None:
            if len(self._tags) >= _TAG_CACHE:
                self._tags.clear()
            tag = self._tags[size] = hmac.digest(self._length_key, b"%d" % size, "sha256")
        return tag

    def dumps(self, obj: Any) -> bytes:
        """``tag || mac || pickle``; FrameTooLarge over ``max_frame``."""
        data = pickle.dumps(obj)
        size = TAG_SIZE + MAC_SIZE + len(data)
        if size > self.max_frame:
            raise FrameTooLarge(f"a {type(obj).__name__} of {size} bytes exceeds the "
                                f"{self.max_frame}-byte actor frame limit")
        return self.length_tag(size) + self._mac(data) + data

    def loads(self, frame: bytes | bytearray | memoryview) -> Any:
        """Check the length tag and the MAC, then unpickle."""
        with memoryview(frame) as view:
            size = len(view)
            if size < TAG_SIZE + MAC_SIZE:
                raise FrameRejected(f"dropped a {size}-byte frame: too short to be ours")
            if not hmac.compare_digest(bytes(view[:TAG_SIZE]), self.length_tag(size)):
                raise FrameRejected(f"dropped a {size}-byte frame: bad length tag")
            return self.open_body(view)

    def open_body(self, view: memoryview) -> Any:
        """Check the MAC of a body whose length tag was already checked; unpickle."""
        with view[TAG_SIZE + MAC_SIZE:] as data:
            if not hmac.compare_digest(view[TAG_SIZE:TAG_SIZE + MAC_SIZE], self._mac(data)):
                raise FrameRejected(f"dropped an unauthenticated {len(view)}-byte frame")
            return pickle.loads(data)

    def receive_buffer(self, _deserialize: object = None) -> FrameBuffer:
        """A fresh FrameBuffer (signature of Thespian's ``ReceiveBuffer``)."""
        return FrameBuffer(self)


class FrameBuffer:
    """One incoming frame, fed by ``addMore`` (Thespian's ReceiveBuffer API).

    Holds at most MAX_HEADER + TAG_SIZE bytes until the length tag verified,
    and never more than the announced (bounded) size plus one read's extra.
    """

    def __init__(self, codec: AuthenticatedPickle) -> None:
        self._codec = codec
        self._header = bytearray()
        self._size: int | None = None
        self._body = bytearray()
        self._tag_ok = False
        self._extra = b""
        self.rejected: str | None = None
        self._decoded: tuple[Any, bytes] | None = None

    @property
    def buffered(self) -> int:
        """Bytes held (header, body and extra): what a peer made us keep."""
        return len(self._header) + len(self._body) + len(self._extra)

    @property
    def verified(self) -> bool:
        """The announced length carried a valid tag (the peer holds the secret)."""
        return self._tag_ok

    def addMore(self, data: bytes | str) -> None:
        if not data or self.rejected is not None:
            return
        chunk = data.encode("latin-1") if isinstance(data, str) else data
        if self._size is None:
            chunk = self._feed_header(chunk)
            if self._size is None:
                return
        if not self._tag_ok:  # take only the tag until it is checked
            need = TAG_SIZE - len(self._body)
            self._body += chunk[:need]
            chunk = chunk[need:]
            if len(self._body) < TAG_SIZE:
                return
            self._check_tag()
            if self.rejected is not None:
                return
        want = self._size - len(self._body)
        self._body += chunk[:want]
        self._extra += chunk[want:]

    def _feed_header(self, chunk: bytes) -> bytes:
        end = chunk.find(b">")
        if end < 0:
            self._header += chunk
            if len(self._header) >= MAX_HEADER:
                self._reject(f"no length header in the first {MAX_HEADER} bytes")
            return b""
        self._header += chunk[:end]
        digits = bytes(self._header)
        if not digits.isdigit() or len(digits) >= MAX_HEADER:
            self._reject(f"bad length header {digits[:MAX_HEADER]!r}")
            return b""
        size = int(digits)
        if size > self._codec.max_frame:
            self._reject(f"peer announced a {size}-byte frame; "
                         f"the limit is {self._codec.max_frame}")
        elif size < TAG_SIZE + MAC_SIZE:
            self._reject(f"peer announced a {size}-byte frame: too short to be ours")
        else:
            self._size = size
        return chunk[end + 1:]

    def _check_tag(self) -> None:
        assert self._size is not None
        tag = bytes(self._body[:TAG_SIZE])
        if hmac.compare_digest(tag, self._codec.length_tag(self._size)):
            self._tag_ok = True
        else:
            self._reject(f"{self._size}-byte frame with a bad length tag")

    def _reject(self, reason: str) -> None:
        self.rejected = reason
        self._header = bytearray()
        self._body = bytearray()
        self._extra = b""

    def is_empty(self) -> bool:
        return not self._header and self._size is None and self.rejected is None

    def remainingAmount(self) -> int:
        """How much to read next: never past the tag before it is checked."""
        if self.rejected is not None:
            return 1
        if self._size is None:  # header and tag in one read: no frame is shorter
            return MAX_HEADER + TAG_SIZE - len(self._header)
        if not self._tag_ok:
            return TAG_SIZE - len(self._body)
        return max(1, self._size - len(self._body))

    def isDone(self) -> bool:
        return self.rejected is not None or self._decoded is not None or (
            self._size is not None and len(self._body) == self._size)

    def removeExtra(self) -> None:
        self._extra = b""

    def completed(self) -> tuple[Any, bytes] | None:
        """``(message, extra bytes)`` once whole; None while incomplete or when
        the frame was refused (logged once)."""
        if self._decoded is not None:
            return self._decoded[0], self._extra
        if self.rejected is None and not self.isDone():
            return None
        if self.rejected is None:
            try:
                with memoryview(self._body) as view:
                    self._decoded = (self._codec.open_body(view), b"")
            except FrameRejected as exc:
                self._reject(str(exc))
            else:
                return self._decoded[0], self._extra
        _REFUSALS.note(self.rejected or "")
        return None


class _RefusalLog:
    """At most one warning a second for refused frames (a flood is cheap to
    send); the count of those not logged rides on the next one."""

    def __init__(self, period_s: float = 1.0) -> None:
        self._period = period_s
        self._last = -period_s
        self._quiet = 0

    def note(self, reason: str) -> None:
        now = time.monotonic()
        if now - self._last < self._period:
            self._quiet += 1
            return
        more = f" (and {self._quiet} more since the last report)" if self._quiet else ""
        log.warning("actor transport: refused a frame: %s%s", reason, more)
        self._last, self._quiet = now, 0


_REFUSALS = _RefusalLog()


# --------------------------------------------------------------------------
# Accepted connections that have not yet sent a whole frame


def bound_pending_connections(accept: Callable[[Any], None],
                              limit: int = MAX_PENDING_CONNECTIONS) -> Callable[[Any], None]:
    """Wrap ``TCPTransport._acceptNewIncoming``: after each accept, close the
    oldest connections beyond ``limit`` that have not completed a frame."""

    @functools.wraps(accept)
    def accept_bounded(transport: Any) -> None:
        before = set(transport._incomingSockets)
        accept(transport)
        now = time.monotonic()
        for fileno in set(transport._incomingSockets) - before:
            transport._incomingSockets[fileno].naos_accepted_at = now
        pending = sorted(
            (inc.naos_accepted_at, fileno)
            for fileno, inc in transport._incomingSockets.items()
            if hasattr(inc, "naos_accepted_at") and not _verified(inc))
        for _, fileno in pending[:max(0, len(pending) - limit)]:
            transport._incomingSockets.pop(fileno).close()

    accept_bounded.__naos_hook__ = True  # type: ignore[attr-defined]
    return accept_bounded


def _verified(incoming: Any) -> bool:
    """A connection whose frame carries a valid length tag is not pending."""
    return bool(getattr(getattr(incoming, "_rData", None), "verified", False))
