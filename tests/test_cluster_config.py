"""Cluster settings, the shared secret file and the cluster tables (real
SQLite files in a temp dir)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from actors.domain.placement import LOST, UP
from naosd.config import check_bind_address, load, render_default_config
from naosd.errors import ConfigError
from naosd.runtime import fence
from naosd.runtime.cluster import read_secret, setup
from naosd.storage import cluster as cluster_store
from naosd.storage.store import Store

HOME = Path("/home/u")


def cfg(environ: dict[str, str]) -> object:
    return load(environ=environ, uid=1000, home=HOME)


def cluster_env(**kw: str) -> dict[str, str]:
    env = {"NAOS_CLUSTER_ENABLED": "true", "NAOS_CLUSTER_BIND": "10.1.2.3:7735",
           "NAOS_CLUSTER_NODE": "a", "NAOS_CLUSTER_SECRET_FILE": "/etc/naos/cluster.key"}
    env.update({f"NAOS_CLUSTER_{k.upper()}": v for k, v in kw.items()})
    return env


def test_cluster_is_off_by_default_and_needs_nothing() -> None:
    c = cfg({})
    assert c.cluster_enabled is False  # type: ignore[attr-defined]
    assert c.cluster_bind == "" and c.cluster_capabilities == ()  # type: ignore[attr-defined]
    text = render_default_config(c)  # type: ignore[arg-type]
    assert "[cluster]" in text and "enabled = false" in text and "capabilities = []" in text


def test_cluster_settings_are_read_and_capabilities_normalised() -> None:
    c = cfg(cluster_env(capabilities="gpu, ssd,gpu", leader="10.1.2.1:7735",
                        heartbeat_s="0.5", lost_after="4"))
    assert c.cluster_capabilities == ("gpu", "ssd")  # type: ignore[attr-defined]
    assert c.cluster_leader == "10.1.2.1:7735"  # type: ignore[attr-defined]
    assert c.cluster_heartbeat_s == 0.5 and c.cluster_lost_after == 4  # type: ignore[attr-defined]


@pytest.mark.parametrize(("env", "problem"), [
    (cluster_env(bind="0.0.0.0:7735"), "every interface"),
    (cluster_env(bind="8.8.8.8:7735"), "not a private address"),
    (cluster_env(bind="224.0.0.1:7735"), "not a private address"),
    (cluster_env(bind="10.1.2.3"), "expected IPV4:PORT"),
    (cluster_env(bind="host.example:7735"), "not an IPv4 address"),
    (cluster_env(bind="10.1.2.3:0"), "expected IPV4:PORT"),
    (cluster_env(leader="10.1.2.1"), "cluster.leader"),
    (cluster_env(node=""), "needs a node name"),
    (cluster_env(node="Bad Name"), "not a valid node name"),
    (cluster_env(secret_file=""), "needs the shared secret file"),
    (cluster_env(capabilities="GPU"), "not a valid name"),
    (cluster_env(lost_after="1"), "between 2 and 1000"),
])
def test_bad_cluster_settings_are_refused_by_name(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        cfg(env)


def test_force_public_allows_public_and_wildcard() -> None:
    for bind in ("0.0.0.0:7735", "8.8.8.8:7735"):
        assert cfg(cluster_env(bind=bind, force_public="1")).cluster_bind == bind  # type: ignore[attr-defined]


def test_private_and_loopback_addresses_are_allowed() -> None:
    for host in ("10.0.0.1", "172.16.5.4", "192.168.1.2", "127.0.0.2"):
        check_bind_address(host, force_public=False)


def test_bad_settings_are_ignored_while_cluster_mode_is_off() -> None:
    env = cluster_env(bind="0.0.0.0:1")
    env["NAOS_CLUSTER_ENABLED"] = "false"
    assert cfg(env).cluster_enabled is False  # type: ignore[attr-defined]


def write_secret(path: Path, data: bytes, mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)
    return path


def test_secret_file_is_read_stripped(tmp_path: Path) -> None:
    key = write_secret(tmp_path / "k", b"  " + b"s" * 40 + b"\n")
    assert read_secret(key) == b"s" * 40


@pytest.mark.parametrize(("mode", "data", "problem"), [
    (0o644, b"s" * 40, "readable by others"),
    (0o640, b"s" * 40, "readable by others"),
    (0o600, b"short", "at least 32"),
    (0o600, b"s" * 5000, "larger than 4096"),
])
def test_bad_secret_files_are_refused(tmp_path: Path, mode: int, data: bytes,
                                      problem: str) -> None:
    key = write_secret(tmp_path / "k", data, mode)
    with pytest.raises(ConfigError, match=problem):
        read_secret(key)


def test_missing_directory_and_symlinked_secrets_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open"):
        read_secret(tmp_path / "nope")
    with pytest.raises(ConfigError, match="not a regular file"):
        read_secret(tmp_path)
    real = write_secret(tmp_path / "k", b"s" * 40)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(ConfigError, match="cannot open"):
        read_secret(tmp_path / "link")


def test_setup_builds_the_thespian_capabilities(tmp_path: Path) -> None:
    key = write_secret(tmp_path / "k", b"s" * 40)
    member = setup(cfg(cluster_env(secret_file=str(key), leader="10.1.2.1:7735",  # type: ignore[arg-type]
                                   capabilities="gpu", reregister_s="3")))
    assert not member.is_leader and member.address == "10.1.2.3:7735"
    assert member.thespian_capabilities() == {
        "Convention Address.IPv4": "10.1.2.1:7735", "naos.node": "a",
        "naos.address": "10.1.2.3:7735", "naos.capabilities": ["gpu"]}
    assert member.reregistration_period().total_seconds() == 3
    leader = setup(cfg(cluster_env(secret_file=str(key))))  # type: ignore[arg-type]
    assert leader.is_leader and leader.leader == "10.1.2.3:7735"


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = Store.open(tmp_path / "naos.db", checkpoint_path=tmp_path / "audit.head")
    yield s
    s.close()


def audit_types(s: Store) -> list[str]:
    return [r.type for r in s.audit_tail(100)]


def test_store_tracks_nodes_placements_and_audits(store: Store) -> None:
    assert cluster_store.local_node(store) is None
    assert cluster_store.run_id(store) == ""
    cluster_store.reset(store, name="a", address="10.0.0.1:7735", capabilities=["gpu"],
                        leader="10.0.0.1:7735", run="f" * 32)
    assert cluster_store.local_node(store) == "a" and cluster_store.run_id(store) == "f" * 32
    assert cluster_store.node_joined(store, "b", "10.0.0.2:7735", ["gpu"]) is True
    assert cluster_store.node_joined(store, "b", "10.0.0.2:7735", ["gpu"]) is False
    assert cluster_store.node_joined(store, "a", "10.6.6.6:1", []) is False  # our own name
    cluster_store.place(store, "g", "b", previous=None, requires=["gpu"], actor="agents")
    cluster_store.place(store, "x", "a", previous=None, requires=[], actor="agents")
    assert cluster_store.loads(store) == {"a": 1, "b": 1}
    assert cluster_store.node_gone(store, "b", LOST, "no heartbeat") == ["g"]
    assert cluster_store.node_gone(store, "b", LOST, "again") == []  # once
    assert cluster_store.node_gone(store, "a", LOST, "local") == []  # never the local node
    states = {n.name: n.state for n in cluster_store.nodes(store)}
    assert states == {"a": UP, "b": LOST}
    # a lost node that answers again keeps its address and capabilities
    assert cluster_store.node_joined(store, "b", None, None) is True
    rows = {r["name"]: r for r in cluster_store.node_rows(store)}
    assert rows["b"]["address"] == "10.0.0.2:7735" and rows["b"]["capabilities"] == ["gpu"]
    assert rows["a"]["local"] and not rows["b"]["local"]
    cluster_store.unplaceable(store, "g", ["node=b"], "no node", "agents")
    assert cluster_store.placements(store) == {"x": "a"}
    assert audit_types(store).count("cluster.node_joined") == 2
    assert {"cluster.node_lost", "agent.placed", "agent.unplaceable"} <= set(audit_types(store))
    assert store.verify_audit().ok
    cluster_store.clear(store)
    assert cluster_store.local_node(store) is None and cluster_store.placements(store) == {}


RUN = "0123456789abcdef" * 2


def test_fence_kills_what_an_expired_leader_placed(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cluster"
    monkeypatch.setattr(fence, "FENCE_DIR", root)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        fence.register(RUN, child.pid)
        fence.register(RUN, 999_999_999)  # gone, or never ours: never signalled
        fence.touch_beat(RUN)
        beat = (root / RUN / "beat").stat().st_mtime
        assert fence.expired(root, 5.0, now=beat + 4.9) == {}
        assert fence.expired(root, 5.0, now=beat + 5.1) == {RUN: [child.pid, 999_999_999]}
        assert fence.fence(root, RUN, [child.pid, 999_999_999], os.getpid()) == [child.pid]
        assert child.wait(timeout=30) == -signal.SIGKILL
        assert not (root / RUN).exists()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)


def test_fence_ignores_bad_run_names_and_foreign_processes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cluster"
    monkeypatch.setattr(fence, "FENCE_DIR", root)
    for bad in ("../../etc", "ABC", "", "0" * 31):
        fence.register(bad, 1)
        fence.touch_beat(bad)
    assert not root.exists()
    fence.register(RUN, 1)  # init: not our descendant
    assert fence.fence(root, RUN, [1], os.getpid()) == []
    assert not (root / RUN).exists()
    monkeypatch.setattr(fence, "FENCE_DIR", None)  # not a member: nothing is written
    fence.register(RUN, 1)
    assert not (root / RUN).exists()
