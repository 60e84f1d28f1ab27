"""The broker through the real daemon and naosctl: skills, WASM skills, routes, stats."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Naosd, clean_env, reap, start_naosd

pytestmark = pytest.mark.e2e

CSV_TOTAL = Path(__file__).resolve().parent.parent / "examples" / "skills" / "csv-total"


def env_without_llm(base: Path, **extra: str) -> dict[str, str]:
    """No LLM route: no remote LLM and the embedded one off (CI installs it)."""
    return clean_env(XDG_RUNTIME_DIR=str(base), XDG_STATE_HOME=str(base / "xdg-state"),
                     XDG_CONFIG_HOME=str(base / "xdg-config"), NAOS_LLM_LOCAL="false",
                     **extra)


@pytest.fixture
def daemon(base: Path) -> Iterator[Naosd]:
    """The shared fixture's daemon, with no LLM: unmatched tasks have no route."""
    d = start_naosd(base, env=env_without_llm(base))
    try:
        yield d
    finally:
        survivors = reap(d)
        assert not survivors, f"processes outlived naosd: {survivors}\n{d.log()}"


def ctl_json(daemon: Naosd, *args: str) -> dict:
    out = daemon.ctl(*args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def copy_package(base: Path, name: str = "pkg") -> Path:
    target = base / name
    shutil.copytree(CSV_TOTAL, target)
    return target


def edit_manifest(pkg: Path, **changes) -> None:
    data = json.loads((pkg / "manifest.json").read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    (pkg / "manifest.json").write_text(json.dumps(data))


def installed(daemon: Naosd) -> list[str]:
    return [s["name"] for s in ctl_json(daemon, "skill", "list")["skills"]]


def trust(daemon: Naosd, agent: str) -> None:
    daemon.ctl("axis", "register", agent, "--t-score", "900", "--c-score", "950", check=True)


def test_skill_route_executes_builtin_and_records_cost(daemon: Naosd):
    trust(daemon, "ann")
    out = daemon.ctl("broker", "execute", "total these invoices: 12.50, 30, 7.25")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "total: 49.75 (3 numbers)"
    assert "number-total" in out.stderr
    result = ctl_json(daemon, "broker", "execute", "count the words in: a b c", "--agent", "ann")
    assert (result["route"], result["handler"]) == ("skill", "word-count")
    assert result["output"].startswith("words: 3,") and result["cost_micro"] == 2
    assert result["agent"] == "ann" and result["reserved_micro"] == 2
    history = ctl_json(daemon, "cost", "history", "--days", "1")
    assert [e["handler"] for e in history["entries"]] == ["number-total", "word-count"]
    assert history["total_micro"] == 5 + 2
    rows = json.loads(daemon.ctl("audit", "tail", "--type", "broker.execute", "--json").stdout)
    assert [r["detail"]["handler"] for r in rows] == ["number-total", "word-count"]
    assert rows[-1]["agent"] == "ann"


def test_a_pinned_route_runs_the_named_handler_whatever_the_text_says(daemon: Naosd):
    trust(daemon, "ann")
    routed = ctl_json(daemon, "broker", "execute", "sha256 of hello", "--agent", "ann")
    assert routed["handler"] == "sha256"  # what the text alone routes to
    pinned = ctl_json(daemon, "broker", "execute", "sha256 of hello", "--agent", "ann",
                      "--route", "skill:word-count")
    assert (pinned["route"], pinned["handler"], pinned["pinned"]) == ("skill", "word-count",
                                                                     True)
    assert pinned["output"].startswith("words: 3,")
    missing = daemon.ctl("broker", "execute", "x", "--route", "wasm:nope")
    assert missing.returncode != 0 and "no wasm skill named 'nope'" in missing.stderr
    bad = daemon.ctl("broker", "execute", "x", "--route", "gpu:fast")
    assert bad.returncode == 2 and "expected skill:NAME" in bad.stderr


def test_no_route_is_a_clear_error_and_audited(daemon: Naosd):
    out = daemon.ctl("broker", "execute", "write me a poem about the sea")
    assert out.returncode == 1
    assert "no route for task" in out.stderr and "no LLM is configured" in out.stderr
    explained = daemon.ctl("broker", "route", "what is the total?", "--explain")
    assert explained.returncode == 1
    assert "near miss" in explained.stdout and "number-total" in explained.stdout
    rows = json.loads(daemon.ctl("audit", "tail", "--type", "broker.denied", "--json").stdout)
    assert rows and rows[-1]["detail"]["error"] == "no_route"
    assert ctl_json(daemon, "cost", "history")["entries"] == []


def test_install_wasm_skill_then_route_and_execute_it(daemon: Naosd, base: Path):
    digest = hashlib.sha256((CSV_TOTAL / "module.wasm").read_bytes()).hexdigest()
    result = ctl_json(daemon, "skill", "install", str(CSV_TOTAL), "--sha256", digest)
    assert result["name"] == "csv-total" and result["sha256"] == digest
    skills = {s["name"]: s for s in ctl_json(daemon, "broker", "skills")["skills"]}
    assert skills["csv-total"]["kind"] == "wasm" and skills["number-total"]["kind"] == "skill"
    route = ctl_json(daemon, "broker", "route", "csv total: 12,30,-7")
    assert route["chosen"] == {"name": "csv-total", "kind": "wasm"}
    cleared = [c["name"] for c in route["candidates"] if c["cleared"]]
    assert cleared == ["csv-total", "number-total"]  # cheapest first
    explained = daemon.ctl("broker", "route", "csv total: 12,30,-7", "--explain").stdout
    assert "* csv-total (wasm" in explained and "number-total (skill" in explained
    ran = ctl_json(daemon, "broker", "execute", "csv total: 12,30,-7\n4,5")
    assert ran["route"] == "wasm" and ran["output"] == "total: 44 (5 numbers)\n"
    assert ran["fuel_used"] > 0 and ran["cost_micro"] >= 3 + 1
    assert ran["reserved_micro"] >= ran["cost_micro"]
    failed = daemon.ctl("broker", "execute", "csv total: none here")
    assert failed.returncode == 1 and "exited with code 4" in failed.stderr
    entries = ctl_json(daemon, "cost", "history")["entries"]
    assert [(e["handler"], e["status"]) for e in entries] == [("csv-total", "ok"),
                                                              ("csv-total", "failed")]
    assert entries[1]["cost_micro"] >= 1  # the fuel it burned is charged
    assert daemon.ctl("skill", "remove", "csv-total").returncode == 0
    assert installed(daemon) == []
    assert ctl_json(daemon, "broker", "route", "csv total: 1,2")["chosen"]["name"] == "number-total"


def test_skill_install_refuses_wrong_sha256_and_installs_nothing(daemon: Naosd):
    out = daemon.ctl("skill", "install", str(CSV_TOTAL), "--sha256", "0" * 64)
    assert out.returncode == 2
    assert "sha256 mismatch" in out.stderr and "nothing was installed" in out.stderr
    assert installed(daemon) == []
    rows = json.loads(daemon.ctl("audit", "tail", "--type", "skill.install", "--json").stdout)
    assert rows == []


@pytest.mark.parametrize(("changes", "message"), [
    ({"runtime": "wasip2-component"}, "runtime must be 'wasip1-command'"),
    ({"entrypoint": "main"}, "entrypoint must be '_start'"),
    ({"price_micro": -1}, "price_micro must be a whole number"),
    ({"price_micro": 1.5}, "price_micro must be a whole number"),
    ({"name": "Bad Name"}, "invalid skill name"),
    ({"name": "number-total"}, "taken by a built-in"),
    ({"version": None}, "missing field(s) version"),
    ({"colour": "red"}, "unknown field(s) colour"),
    ({"patterns": {"regexes": ["(a+)+$"]}}, "nests quantifiers"),
    ({"patterns": {"regexes": ["x*"]}}, "matches the empty string"),
    ({"patterns": {}}, "at least one keyword"),
    ({"module": "../module.wasm"}, "module must be a plain file name"),
    ({"sha256": "f" * 64}, "sha256 mismatch"),
])
def test_skill_install_refuses_a_bad_manifest(daemon: Naosd, base: Path, changes, message):
    pkg = copy_package(base)
    edit_manifest(pkg, **changes)
    out = daemon.ctl("skill", "install", str(pkg))
    assert out.returncode != 0
    assert message in out.stderr, out.stderr
    assert installed(daemon) == []


def test_skill_install_refuses_a_module_that_cannot_run(daemon: Naosd, base: Path):
    pkg = copy_package(base)
    (pkg / "module.wasm").write_bytes(b"\0asm\x01\0\0\0garbage")
    out = daemon.ctl("skill", "install", str(pkg))
    assert out.returncode != 0 and "skill module" in out.stderr, out.stderr
    (pkg / "module.wasm").unlink()
    out = daemon.ctl("skill", "install", str(pkg))
    assert out.returncode != 0 and "no module" in out.stderr
    assert installed(daemon) == []


def test_skill_install_from_archives_and_replace(daemon: Naosd, base: Path):
    tgz = base / "csv-total.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        for name in ("manifest.json", "module.wasm"):
            tf.add(CSV_TOTAL / name, arcname=name)
    assert daemon.ctl("skill", "install", str(tgz)).returncode == 0
    again = daemon.ctl("skill", "install", str(tgz))
    assert again.returncode == 1 and "already installed" in again.stderr
    pkg = copy_package(base)
    edit_manifest(pkg, version="1.1.0")
    archive = base / "csv-total.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("manifest.json", "module.wasm"):
            zf.write(pkg / name, arcname=name)
    assert daemon.ctl("skill", "install", str(archive), "--replace").returncode == 0
    [info] = ctl_json(daemon, "skill", "list")["skills"]
    assert info["version"] == "1.1.0"
    bogus = base / "not-a-package.bin"
    bogus.write_bytes(b"nothing")
    out = daemon.ctl("skill", "install", str(bogus))
    assert out.returncode != 0 and "not a skill package" in out.stderr


def test_installed_skills_survive_a_restart(daemon: Naosd, base: Path):
    assert daemon.ctl("skill", "install", str(CSV_TOTAL)).returncode == 0
    assert daemon.stop() == 0
    again = start_naosd(base, env=env_without_llm(base))
    try:
        assert installed(again) == ["csv-total"]
        assert ctl_json(again, "broker", "execute", "csv total: 1,2")["output"].startswith(
            "total: 3")
    finally:
        assert not reap(again)


def test_stats_report_saving_against_all_llm(daemon: Naosd):
    for task in ("total these invoices: 1, 2", "sha256 of: x", "count the words in: a b"):
        assert daemon.ctl("broker", "execute", task).returncode == 0
    stats = ctl_json(daemon, "broker", "stats", "--since", "1d")
    assert stats["tasks"] == 3 and set(stats["by_kind"]) == {"skill"}
    assert stats["cost_micro"] == 5 + 1 + 2
    assert stats["all_llm_micro"] == stats["by_kind"]["skill"]["llm_estimate_micro"]
    assert stats["all_llm_micro"] > stats["cost_micro"]
    assert stats["saved_micro"] == stats["all_llm_micro"] - stats["cost_micro"]
    text = daemon.ctl("broker", "stats").stdout
    assert "saved" in text and "3 tasks" in text
    bad = daemon.ctl("broker", "stats", "--since", "yesterday")
    assert bad.returncode == 2 and "neither a duration" in bad.stderr


def test_hostile_task_input_is_refused_clearly(daemon: Naosd):
    empty = daemon.ctl("broker", "execute", "   ")
    assert empty.returncode == 2 and "task is empty" in empty.stderr
    huge = daemon.ctl("broker", "execute", "-", input="total: 1 " * 20_000)
    assert huge.returncode == 2 and "longer than" in huge.stderr
    agent = daemon.ctl("broker", "execute", "sha256 of: x", "--agent", "../etc")
    assert agent.returncode == 2 and "invalid agent name" in agent.stderr


def test_thresholds_come_from_the_configuration(base: Path):
    env = env_without_llm(base, NAOS_BROKER_WASM_THRESHOLD="1",
                          NAOS_BROKER_SKILL_THRESHOLD="0.4")
    daemon = start_naosd(base, env=env)
    try:
        assert daemon.ctl("skill", "install", str(CSV_TOTAL)).returncode == 0
        skills = ctl_json(daemon, "broker", "skills")
        assert skills["thresholds"] == {"skill": 0.4, "wasm": 1.0}
        route = ctl_json(daemon, "broker", "route", "csv total: 1,2")
        assert route["chosen"]["name"] == "number-total"  # the WASM skill no longer clears
        # one keyword of three scores 0.46: below the default 0.5, above 0.4
        assert ctl_json(daemon, "broker", "route", "hash this: abc")["chosen"]["name"] == "sha256"
    finally:
        assert not reap(daemon)


SPIN = """(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (loop $l (br $l))))"""


def test_a_wasm_skill_that_runs_out_of_fuel_is_charged_its_reservation(daemon: Naosd,
                                                                       base: Path):
    import wasmtime

    pkg = copy_package(base, "spin")
    (pkg / "module.wasm").write_bytes(wasmtime.wat2wasm(SPIN))
    edit_manifest(pkg, name="spin", patterns={"keywords": ["spin forever"]})
    assert daemon.ctl("skill", "install", str(pkg)).returncode == 0
    ctl_json(daemon, "cost", "set", "--global", "--budget", "$1/day")
    out = daemon.ctl("broker", "execute", "spin forever")
    assert out.returncode == 1 and "fuel" in out.stderr, out.stderr
    [entry] = ctl_json(daemon, "cost", "history")["entries"]
    assert (entry["handler"], entry["status"]) == ("spin", "failed")
    assert entry["cost_micro"] == entry["reserved_micro"] > 3  # price + the whole fuel budget
    [glob] = ctl_json(daemon, "cost", "status")["budgets"]
    assert glob["spent_micro"] == entry["cost_micro"] and glob["reserved_micro"] == 0


def test_the_trust_gate_is_checked_before_anything_is_reserved(daemon: Naosd):
    ctl_json(daemon, "cost", "set", "--global", "--budget", "$1/day")
    denied = daemon.ctl("broker", "execute", "sha256 of: x", "--agent", "stranger")
    assert denied.returncode == 1 and "not registered with the trust gate" in denied.stderr
    daemon.ctl("axis", "register", "poor", "--t-score", "900", "--c-score", "100", check=True)
    broke = daemon.ctl("broker", "execute", "sha256 of: x", "--agent", "poor")
    assert broke.returncode == 1, broke.stderr  # rating D: nothing may be spent
    trust(daemon, "ann")
    ok = ctl_json(daemon, "broker", "execute", "sha256 of: x", "--agent", "ann")
    assert ok["trust"] == "ok"
    decisions = audit_rows(daemon, "trust.deny") + audit_rows(daemon, "trust.allow")
    assert sorted((r["agent"], r["type"]) for r in decisions) == [
        ("ann", "trust.allow"), ("poor", "trust.deny"), ("stranger", "trust.deny")]
    denials = audit_rows(daemon, "broker.denied")
    assert [(r["agent"], r["detail"]["error"]) for r in denials] == [
        ("stranger", "trust_denied"), ("poor", "trust_denied")]
    assert [e["agent"] for e in ctl_json(daemon, "cost", "history")["entries"]] == ["ann"]
    [glob] = ctl_json(daemon, "cost", "status")["budgets"]
    assert (glob["spent_micro"], glob["reserved_micro"]) == (1, 0)


def audit_rows(daemon: Naosd, type_: str) -> list[dict]:
    return json.loads(daemon.ctl("audit", "tail", "--type", type_, "--json").stdout)


def test_a_reload_applies_new_thresholds(daemon: Naosd, base: Path):
    assert daemon.ctl("broker", "route", "hash this: abc").returncode == 1  # 0.46 < 0.5
    config = base / "xdg-config" / "naos" / "naosd.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[broker]\nskill_threshold = 0.4\n")
    assert daemon.ctl("reload").returncode == 0, daemon.log()
    assert ctl_json(daemon, "broker", "route", "hash this: abc")["chosen"]["name"] == "sha256"
