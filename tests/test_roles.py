"""The roles' rule (naosd.control.roles) and the role every method declares
(naosd.control.api): who is an operator, who a reader, what each may call."""

from __future__ import annotations

import pytest
from doc_tables import local_methods

from naosd.control.api import Api
from naosd.control.roles import (
    NEEDS,
    OPERATE,
    OPERATOR,
    READ,
    READER,
    Access,
    Group,
    denial,
    may_call,
)
from naosd.control.table import MethodTable
from naosd.methods import method_table

OPS, READERS = Group("naos-ops", 2001), Group("naos", 2002)
ACCESS = Access(1000, OPS, READERS)

METHODS = method_table()


@pytest.mark.parametrize(("uid", "gid", "groups", "role"), [
    pytest.param(1000, 1000, (), OPERATOR, id="owner"),
    pytest.param(0, 0, (), OPERATOR, id="root"),
    pytest.param(1001, 2001, (), OPERATOR, id="operator-primary-group"),
    pytest.param(1001, 1001, (5, 2001), OPERATOR, id="operator-supplementary"),
    pytest.param(1001, 1001, (2002, 2001), OPERATOR, id="in-both-operator-wins"),
    pytest.param(1002, 2002, (), READER, id="reader-primary-group"),
    pytest.param(1002, 1002, (2002,), READER, id="reader-supplementary"),
    pytest.param(1003, 1003, (4, 27), None, id="anyone-else"),
])
def test_the_role_of_each_peer(uid, gid, groups, role):
    assert ACCESS.role(uid, gid, groups) == role


def test_without_groups_only_the_owner_and_root_are_served():
    bare = Access(1000)
    assert bare.role(1000, 1000, ()) == OPERATOR and bare.role(0, 0, ()) == OPERATOR
    assert bare.role(1001, 2001, (2002,)) is None
    assert bare.socket_group is None


def test_the_refusal_names_who_is_allowed():
    assert ACCESS.refusal(1003) == (
        "uid 1003 is not allowed to use this naosd; operators: uid 1000 (naosd's own), root, "
        "group naos-ops; readers: group naos")
    assert Access(0).refusal(65534) == (
        "uid 65534 is not allowed to use this naosd; operators: root; readers: none")


def test_the_socket_belongs_to_the_readers_group_when_both_are_set():
    assert ACCESS.socket_group == READERS
    assert Access(1000, OPS).socket_group == OPS
    assert Access(1000, None, READERS).socket_group == READERS


@pytest.mark.parametrize(("role", "need", "allowed"), [
    (OPERATOR, OPERATE, True), (OPERATOR, READ, True),
    (READER, READ, True), (READER, OPERATE, False),
    ("", READ, True), ("", OPERATE, False),  # no role yet: never more than a reader
])
def test_may_call(role, need, allowed):
    assert may_call(role, need) is allowed


def test_the_denial_names_the_method_and_the_role_it_needs():
    assert denial("agent.create", OPERATE, READER) == (
        "agent.create needs the operator role (operate); this connection is a reader "
        "(daemon.reader_group): ask an operator")


def test_every_method_declares_a_known_role_and_methods_shows_it():
    listed = {m["name"]: m["role"] for m in local_methods()}
    assert set(listed) == set(METHODS)
    assert set(listed.values()) == set(NEEDS)


# What changes state, spends, runs code or reveals a secret is operate; these
# few are named here so a slip in either direction is caught.
@pytest.mark.parametrize("name", [
    "status", "ping", "methods", "audit.tail", "audit.search", "audit.verify", "audit.export",
    "events", "agent.logs", "cost.status", "cost.history", "broker.skills", "broker.route",
    "broker.stats", "pool.status", "saga.status", "saga.history", "workflow.status",
    "workflow.history", "llm.status", "axis.status", "cluster.nodes", "toolserver.list",
    "toolserver.tools",
])
def test_reads(name):
    local_methods()
    assert METHODS[name].role == READ


@pytest.mark.parametrize("name", [
    "shutdown", "config.reload", "dashboard.url", "config.show", "agent.create", "agent.run",
    "agent.kill", "agent.list", "agent.inspect", "wasm.run", "wasm.validate", "skill.install",
    "broker.execute", "cost.set", "cost.reset", "llm.complete", "saga.run", "saga.resume",
    "pool.submit", "pool.scale", "axis.register", "axis.verify", "axis.cache", "trust.check",
    "project.apply", "toolserver.add", "toolserver.call", "toolserver.refresh",
    "toolserver.restart", "toolserver.remove",
])
def test_operates(name):
    local_methods()
    assert METHODS[name].role == OPERATE


def test_a_method_declared_without_a_role_needs_operate():
    table = MethodTable("test")

    @table.method("test.undeclared")
    async def undeclared(d, p):
        return None

    assert table["test.undeclared"].role == OPERATE
    assert Api(None, table).role_of("test.undeclared") == OPERATE  # type: ignore[arg-type]


def test_an_unknown_role_is_refused_where_the_method_is_declared():
    table = MethodTable("test")
    with pytest.raises(ValueError, match=r"test\.bad: role must be one of read, operate"):
        table.method("test.bad", role="admin")
    assert "test.bad" not in table


def test_an_unknown_method_has_no_role():
    assert Api(None, METHODS).role_of("no.such.method") is None  # type: ignore[arg-type]
