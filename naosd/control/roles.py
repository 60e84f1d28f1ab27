"""Who may use the control socket, and for what (pure: stdlib only).

A connection's role is decided once, at accept, from the credentials the
kernel captured at ``connect()`` (``SO_PEERCRED``, ``SO_PEERGROUPS``):

* **operator**: naosd's own uid, root, or a member of ``daemon.operator_group``:
  every method;
* **reader**: a member of ``daemon.reader_group``: the ``read`` methods only;
* anyone else is refused with a message naming who is allowed.

Every method declares the role it needs (``read`` or ``operate``, see
``naosd.control.api.method``); ``operate`` is the default, so a method whose
declaration was forgotten is closed to readers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

READ, OPERATE = "read", "operate"  # what a method needs
NEEDS = (READ, OPERATE)
OPERATOR, READER = "operator", "reader"  # what a connection is


@dataclass(frozen=True, slots=True)
class Group:
    """A group named in the configuration, resolved to its gid."""

    name: str
    gid: int


@dataclass(frozen=True, slots=True)
class Access:
    """The rule: naosd's uid, the operator group and the reader group."""

    owner_uid: int
    operators: Group | None = None
    readers: Group | None = None

    def role(self, uid: int, gid: int, groups: Iterable[int]) -> str | None:
        """``operator``, ``reader`` or None (refused) for these credentials."""
        if uid in (self.owner_uid, 0):
            return OPERATOR
        member = {gid, *groups}
        if self.operators is not None and self.operators.gid in member:
            return OPERATOR
        if self.readers is not None and self.readers.gid in member:
            return READER
        return None

    def refusal(self, uid: int) -> str:
        """Why ``uid`` is refused, and who is allowed."""
        owner = "root" if self.owner_uid == 0 else f"uid {self.owner_uid} (naosd's own)"
        operators = ", ".join(
            [owner] + ([] if self.owner_uid == 0 else ["root"])
            + ([f"group {self.operators.name}"] if self.operators else []))
        readers = f"group {self.readers.name}" if self.readers else "none"
        return (f"uid {uid} is not allowed to use this naosd; operators: {operators}; "
                f"readers: {readers}")

    @property
    def socket_group(self) -> Group | None:
        """The group the socket (and naosd's own runtime directory) belong to.

        A file has one group: with both groups set it is the readers' (every
        operator may read), so an operator who is neither naosd's user nor
        root must be a member of the reader group too to reach the socket."""
        return self.readers or self.operators


def may_call(role: str, need: str) -> bool:
    """Whether a connection of ``role`` may call a method that needs ``need``."""
    return role == OPERATOR or need == READ


def denial(method: str, need: str, role: str) -> str:
    """The message a connection gets for a method its role may not call."""
    return (f"{method} needs the operator role ({need}); this connection is a {role} "
            "(daemon.reader_group): ask an operator")
