"""A method table: each area of the control API declares its methods in its
own table (``METHODS = MethodTable("agents")``, ``@METHODS.method(...)``), and
the composition root assembles the tables it serves, by name
(:mod:`naosd.methods`): nothing is registered by importing a module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from naosd.control.params import Spec
from naosd.control.roles import NEEDS, OPERATE

if TYPE_CHECKING:
    from naosd.services import Services

Handler = Callable[["Services", dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    handler: Handler
    params: Mapping[str, Spec] = field(default_factory=dict)
    stream: bool = False
    doc: str = ""
    role: str = OPERATE  # what a connection needs to call it: read or operate
    deadline: str | None = None  # the parameter holding the caller's own timeout (s)
    caller: bool = False  # the handler gets who called as p["by"]


class MethodTable(Mapping[str, Method]):
    """The methods of one area, in declaration order."""

    def __init__(self, area: str) -> None:
        self.area = area
        self._methods: dict[str, Method] = {}

    def method(self, method_name: str, /, *, stream: bool = False, role: str = OPERATE,
               deadline: str | None = None, caller: bool = False, **params: Spec
               ) -> Callable[[Handler], Handler]:
        """Declare a handler.  ``deadline`` names a parameter in which the client
        sends how long it waits (seconds): see :func:`naosd.control.api.request_timeout`.
        ``caller``: the handler gets who called as ``p["by"]``."""
        if role not in NEEDS:
            raise ValueError(f"{method_name}: role must be one of {', '.join(NEEDS)}, "
                             f"got {role!r}")
        if method_name in self._methods:
            raise ValueError(f"{method_name} is declared twice in {self.area}")

        def declare(fn: Handler) -> Handler:
            self._methods[method_name] = Method(method_name, fn, params, stream,
                                                (fn.__doc__ or "").strip(), role, deadline,
                                                caller)
            return fn

        return declare

    def __getitem__(self, name: str) -> Method:
        return self._methods[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._methods)

    def __len__(self) -> int:
        return len(self._methods)


def assemble(*tables: Mapping[str, Method]) -> dict[str, Method]:
    """One table from several; a name declared in two is a programming error."""
    out: dict[str, Method] = {}
    for table in tables:
        for name, entry in table.items():
            if name in out:
                raise ValueError(f"method {name} is declared in two tables")
            out[name] = entry
    return out
