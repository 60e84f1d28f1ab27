"""The registered tool servers: their definitions (SQLite, audited) and one
supervised session each (:class:`~naosd.broker.tools.supervisor.ServerSlot`).

A registration is checked before it is kept: the definition's rules
(:func:`actors.domain.tool_servers.server_def`), then what only this host can
tell: the MCP SDK is installed, a stdio command exists and can be run, a
token file is private and readable (``llm.api_key_file``'s rule) and a token
variable is set in naosd's environment.  An HTTP endpoint is not contacted:
one that cannot be reached is registered and shown as down.

The session module (the SDK, ~1.5 s to import) is imported in a thread when
the first server starts, so a daemon without tool servers never pays for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import logging
import os
import shutil
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from actors.domain.tool_servers import ServerDef, server_def, validate_server_name
from naosd.broker.llm.client import read_key_file
from naosd.broker.tools.supervisor import ServerSlot
from naosd.errors import ConfigError, InvalidRequest, NotFound, ToolServerDown
from naosd.storage import tool_servers as sql

if TYPE_CHECKING:
    from naosd.storage.db import AsyncStore

log = logging.getLogger("naosd.tools")
SESSION_MODULE = "naosd.broker.tools.session"
# What a stdio server inherits of naosd's environment (the SDK's own list, plus the locale):
# no NAOS_* setting and no key of naosd's.
INHERITED_ENV = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "LC_ALL")
NO_SDK = "the MCP client needs the official SDK, which is not installed: pip install 'naos[mcp]'"


def server_env(environ: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """A stdio server's environment: :data:`INHERITED_ENV` of naosd's, plus ``extra``."""
    return {**{k: environ[k] for k in INHERITED_ENV if k in environ}, **extra}


class ToolServers:
    def __init__(self, db: AsyncStore, *, log_dir: Path, environ: Mapping[str, str],
                 private: tuple[Path, ...] = ()) -> None:
        """``log_dir``: stdio servers' stderr, one file each; ``environ``: naosd's
        environment (PATH for stdio servers, ``--token-env`` variables);
        ``private``: files and directories of naosd's that are never a token file
        (the state dir, the audit key)."""
        self._db = db
        self._log_dir = log_dir
        self._environ = environ
        self._private = tuple(p.resolve() for p in private)
        self._slots: dict[str, ServerSlot] = {}
        self._session: ModuleType | None = None
        self._importing = asyncio.Lock()

    async def start(self) -> None:
        """Start (or reach) every registered server, in the background."""
        for definition in await self._db.call(sql.list_servers):
            self._add_slot(definition).start()
        if self._slots:
            log.info("tool servers: %s", ", ".join(sorted(self._slots)))

    async def aclose(self) -> None:
        """Stop every server (naosd stops)."""
        slots, self._slots = list(self._slots.values()), {}
        await asyncio.gather(*(s.stop() for s in slots))

    # -- the registry ------------------------------------------------------------------

    async def add(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Register and start a server.  Raises InvalidRequest (the definition, a
        command not found), ConfigError (no SDK, a token that cannot be read),
        Conflict (the name is taken)."""
        definition = server_def(params)
        await asyncio.to_thread(self._check_here, definition)
        stamped = await self._db.call(lambda s: sql.add_server(s, definition))
        await self._db.notify()
        slot = self._add_slot(stamped)
        slot.start()
        return slot.describe()

    async def remove(self, name: str) -> dict[str, Any]:
        validate_server_name(name)
        await self._db.call(lambda s: sql.remove_server(s, name))
        await self._db.notify()
        slot = self._slots.pop(name, None)
        if slot is not None:
            await slot.stop()
        return {"removed": name}

    async def restart(self, name: str) -> dict[str, Any]:
        slot = self.slot(name)
        await slot.restart()
        await self._db.audit("toolserver.restart", actor="mcp", server=name)
        return slot.describe()

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        slots = [self.slot(name)] if name is not None else self._sorted()
        return [s.describe() for s in slots]

    def tools(self, name: str | None = None) -> list[dict[str, Any]]:
        """Each tool as last listed, with its price and function name."""
        slots = [self.slot(name)] if name is not None else self._sorted()
        return [t.to_json(s.definition.price_of(t.name)) for s in slots
                for t in s.listing.tools]

    def slot(self, name: str) -> ServerSlot:
        """Raises NotFound."""
        slot = self._slots.get(name)
        if slot is None:
            raise NotFound(f"no tool server named {name[:80]!r} (naosctl mcp list)")
        return slot

    def get(self, name: str) -> ServerSlot | None:
        return self._slots.get(name)

    def up(self) -> list[ServerSlot]:
        return [s for s in self._sorted() if s.conn is not None]

    def catalog(self) -> list[dict[str, Any]]:
        """The tools as ``broker skills`` lists them: called by name, never routed."""
        return [{"name": t["tool"], "kind": "mcp", "source": f"mcp:{t['server']}",
                 "description": t["description"], "price_micro": t["price_micro"],
                 "state": self._slots[t["server"]].describe()["state"]}
                for t in self.tools()]

    def _sorted(self) -> list[ServerSlot]:
        return [self._slots[n] for n in sorted(self._slots)]

    def _add_slot(self, definition: ServerDef) -> ServerSlot:
        slot = ServerSlot(definition, self._open, self._db.audit)
        self._slots[definition.name] = slot
        return slot

    # -- checks only this host can make (blocking: run in a thread) -------------------

    def _check_here(self, d: ServerDef) -> None:
        if importlib.util.find_spec("mcp") is None:
            raise ConfigError(NO_SDK)
        if d.transport == "stdio":
            self._check_command(d)
        elif d.token_file:
            self._check_token_file(Path(d.token_file))
            read_key_file(Path(d.token_file), "token_file")
        elif d.token_env and not self._environ.get(d.token_env):
            raise ConfigError(f"token_env: naosd's environment has no ${d.token_env} (set it "
                              "where naosd starts, e.g. its unit's Environment=)")

    def _check_command(self, d: ServerDef) -> None:
        if not os.path.isdir(d.cwd):
            raise InvalidRequest(f"cwd {d.cwd!r} is not a directory")
        program = d.command[0]
        if "/" in program:
            found = os.path.join(d.cwd, program)
            usable = os.path.isfile(found) and os.access(found, os.X_OK)
        else:
            path = d.env.get("PATH") or self._environ.get("PATH", os.defpath)
            usable = shutil.which(program, path=path) is not None
        if not usable:
            raise InvalidRequest(f"command {program!r}: no such executable (naosd looks in "
                                 f"{'cwd ' + d.cwd if '/' in program else 'its PATH'})")

    def _check_token_file(self, path: Path) -> None:
        real = path.resolve()
        for private in self._private:
            if real == private or private in real.parents:
                raise InvalidRequest(f"token_file {path}: a file of naosd's own ({private}) "
                                     "is never sent to a tool server")

    # -- sessions -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _open(self, d: ServerDef) -> AsyncIterator[Any]:
        """The slot's session: start or reach ``d`` (raises ToolServerDown)."""
        session = await self._session_module()
        try:
            target = await asyncio.to_thread(self._target, session, d)
        except ConfigError as exc:  # the token file went away, or lost its mode
            raise ToolServerDown(exc.message) from None
        async with session.connect(target) as connection:
            yield connection

    def _target(self, session: ModuleType, d: ServerDef) -> Any:
        if d.transport == "stdio":
            return session.Target(d.name, argv=d.command, env=server_env(self._environ, d.env),
                                  cwd=d.cwd, log_path=self._log_dir / f"{d.name}.log")
        return session.Target(d.name, url=d.url, token=self._token(d))

    def _token(self, d: ServerDef) -> str:
        if d.token_file:
            return read_key_file(Path(d.token_file), "token_file")
        if d.token_env:
            token = self._environ.get(d.token_env, "")
            if not token:
                raise ConfigError(f"token_env: naosd's environment has no ${d.token_env}")
            return token
        return ""

    async def _session_module(self) -> ModuleType:
        async with self._importing:
            if self._session is None:
                try:
                    self._session = await asyncio.to_thread(importlib.import_module,
                                                            SESSION_MODULE)
                except ImportError as exc:
                    raise ToolServerDown(f"{NO_SDK} ({exc})") from None
            return self._session
