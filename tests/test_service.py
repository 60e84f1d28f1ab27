"""naosctl service: the systemd units and launchd plist in deploy/, how they
are rendered for this machine, and install/uninstall through the real CLI.

(The test that plays systemd's notify protocol against naosd is
test_client_e2e.py::test_naosd_speaks_sd_notify.)"""

from __future__ import annotations

import json
import os
import plistlib
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from harness import clean_env

from naosctl import service
from naosd.errors import InvalidRequest, NotFound

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDERS = {"@NAOSD@", "@NAOSCTL@", "@LOG_DIR@"}
NAOSD = Path("/opt/naos/bin/naosd")
NAOSCTL = Path("/opt/naos/bin/naosctl")

# Runs naosctl with the service commands registered even before naosctl/main.py
# imports naosctl.service_commands (test_service_is_registered checks that).
BOOT = ("import sys, naosctl.service_commands, naosctl.main as m; "
        "sys.argv[0] = 'naosctl'; m.main()")


def ctl(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = clean_env(HOME=str(home), XDG_CONFIG_HOME=str(home / "cfg"))
    return subprocess.run([sys.executable, "-c", BOOT, *args], capture_output=True,
                          text=True, timeout=60, env=env)


def directives(unit: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@pytest.fixture
def executables() -> tuple[Path, Path]:
    """This interpreter's installed naosd and naosctl scripts."""
    try:
        return service.find_executable("naosd"), service.find_executable("naosctl")
    except NotFound as exc:
        pytest.skip(f"naos is not installed as scripts here: {exc.message}")


# ---------------------------------------------------------------------------
# The templates
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(service.TEMPLATES))
def test_deploy_files_are_the_embedded_templates(name: str):
    on_disk = (ROOT / "deploy" / name).read_text(encoding="utf-8")
    assert on_disk == service.TEMPLATES[name], (
        f"deploy/{name} and naosctl/service.py differ: keep them identical "
        "(the installer uses the embedded copy, wheels have no deploy/)")


@pytest.mark.parametrize("name", sorted(service.TEMPLATES))
def test_templates_document_their_placeholders(name: str):
    text = service.TEMPLATES[name]
    if name.endswith(".plist"):
        doc = text[text.index("<!--"):text.index("-->")]
        body = text[text.index("-->"):]
    else:
        body = service.strip_template_comment(text)
        doc = text[:len(text) - len(body)]
    used = set(re.findall(r"@[A-Z_]+@", body))
    assert used, f"{name} has no placeholders"
    assert used <= PLACEHOLDERS, f"unknown placeholders: {used - PLACEHOLDERS}"
    for token in used:
        assert token in doc, f"{name}: {token} is not described in the leading comment"


def test_committed_plist_parses_with_plistlib():
    job = plistlib.loads((ROOT / "deploy/launchd/dev.naos.naosd.plist").read_bytes())
    assert job["Label"] == service.LABEL
    assert job["RunAtLoad"] is True and job["KeepAlive"] == {"SuccessfulExit": False}


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def test_system_unit_has_every_directive_the_issue_lists():
    unit = service.render("linux", "system", naosd=NAOSD, naosctl=NAOSCTL, home=Path("/x"))
    d = directives(unit)
    expected = {
        "Type": "notify", "NotifyAccess": "main", "Restart": "on-failure",
        "KillMode": "mixed", "RuntimeDirectory": "naos", "StateDirectory": "naos",
        "ConfigurationDirectory": "naos", "UMask": "0077", "NoNewPrivileges": "yes",
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "User": "naos", "Group": "naos",
        "ExecStart": f"{NAOSD} --system", "ExecReload": f"{NAOSCTL} --system reload",
        "WantedBy": "multi-user.target",
    }
    for key, value in expected.items():
        assert d.get(key) == [value], f"{key}: {d.get(key)}"
    assert int(d["WatchdogSec"][0]) > 0
    # Would break the WebAssembly JIT.
    assert "MemoryDenyWriteExecute" not in d
    assert unit.startswith(f"# {service.MARKER} --system")
    assert not re.search("@[A-Z_]+@", unit) and "This is a template" not in unit


def test_user_unit():
    unit = service.render("linux", "user", naosd=NAOSD, naosctl=NAOSCTL, home=Path("/x"))
    d = directives(unit)
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["ExecStart"] == [str(NAOSD)] and d["ExecReload"] == [f"{NAOSCTL} reload"]
    assert d["Restart"] == ["on-failure"] and d["KillMode"] == ["mixed"]
    assert d["UMask"] == ["0077"] and d["WatchdogSec"] and d["RuntimeDirectory"] == ["naos"]
    assert d["WantedBy"] == ["default.target"]
    assert "User" not in d and not re.search("@[A-Z_]+@", unit)


def test_systemd_paths_are_quoted_or_refused():
    assert service.systemd_exec_path(Path("/opt/my naos/naosd")) == '"/opt/my naos/naosd"'
    assert service.systemd_exec_path(Path("/opt/100%/naosd")) == "/opt/100%%/naosd"
    for bad in ("/opt/$HOME/naosd", '/opt/"q"/naosd', "relative/naosd"):
        with pytest.raises(InvalidRequest):
            service.systemd_exec_path(Path(bad))


@pytest.mark.parametrize("mode", ["user", "system"])
def test_plist_parses_and_keeps_naosd_alive(mode: str):
    home = Path("/Users/alice")
    text = service.render("darwin", mode, naosd=NAOSD, naosctl=None, home=home)
    job = plistlib.loads(text.encode())
    assert job["Label"] == "dev.naos.naosd"
    assert job["RunAtLoad"] is True
    assert job["KeepAlive"] == {"SuccessfulExit": False}
    assert job["Umask"] == 0o077
    log = (home / "Library/Logs/naosd.log" if mode == "user"
           else Path("/Library/Logs/naos/naosd.log"))
    assert job["StandardOutPath"] == job["StandardErrorPath"] == str(log)
    if mode == "user":
        assert job["ProgramArguments"] == [str(NAOSD)]
        assert "UserName" not in job
    else:
        assert job["ProgramArguments"] == [str(NAOSD), "--system"]
        assert job["UserName"] == job["GroupName"] == "naos"
        assert job["EnvironmentVariables"]["NAOS_SOCKET"] == service.MACOS_SYSTEM_SOCKET
    assert service.MARKER in text and not re.search("@[A-Z_]+@", text)


def test_plist_values_are_escaped():
    odd = Path("/opt/a&b <c>/naosd")
    job = plistlib.loads(service.render("darwin", "user", naosd=odd, naosctl=None,
                                        home=Path("/Users/x")).encode())
    assert job["ProgramArguments"] == [str(odd)]


def test_default_locations():
    home = Path("/home/alice")
    user = service.default_dir("linux", "user", {}, home)
    assert user == home / ".config/systemd/user"
    assert service.default_dir("linux", "user", {"XDG_CONFIG_HOME": "/cfg"}, home) == Path(
        "/cfg/systemd/user")
    assert service.default_dir("linux", "user", {"XDG_CONFIG_HOME": "rel"}, home) == user
    assert service.default_dir("linux", "system", {}, home) == Path("/etc/systemd/system")
    assert service.target_path("darwin", "user", {}, home) == (
        home / "Library/LaunchAgents/dev.naos.naosd.plist")
    assert service.target_path("darwin", "system", {}, home) == Path(
        "/Library/LaunchDaemons/dev.naos.naosd.plist")
    assert service.target_path("linux", "system", {}, home, Path("/tmp/u")) == Path(
        "/tmp/u/naosd.service")
    assert service.current_platform("linux") == "linux"
    assert service.current_platform("darwin") == "darwin"


def test_find_executable_prefers_the_interpreters_bin_dir(tmp_path: Path):
    bindir = tmp_path / "venv/bin"
    bindir.mkdir(parents=True)
    (bindir / "python").touch()
    script = bindir / "naosd"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    on_path = tmp_path / "elsewhere/naosd"
    found = service.find_executable("naosd", executable=str(bindir / "python"),
                                    which=lambda _name: str(on_path))
    assert found == script
    script.chmod(0o644)  # not executable: fall back to PATH, which has none either
    with pytest.raises(NotFound, match="--naosd"):
        service.find_executable("naosd", executable=str(bindir / "python"),
                                which=lambda _name: None)


def test_reachability_warnings(tmp_path: Path):
    in_home = [Path("/home/alice/.venv/bin/naosd")]
    assert any("ProtectHome" in w for w in service.reachability_warnings(
        "linux", "system", in_home))
    assert service.reachability_warnings("linux", "user", in_home) == []
    private = tmp_path / "private"
    (private / "bin").mkdir(parents=True)
    private.chmod(0o700)
    warnings = service.reachability_warnings("darwin", "system", [private / "bin/naosd"])
    assert any("not searchable" in w for w in warnings)


def test_root_is_needed_only_for_the_system_directory():
    assert service.root_required("system", None, 1000)
    assert not service.root_required("system", None, 0)
    assert not service.root_required("system", Path("/tmp/u"), 1000)
    assert not service.root_required("user", None, 1000)


# ---------------------------------------------------------------------------
# systemd-analyze verify
# ---------------------------------------------------------------------------


@pytest.fixture
def systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (package systemd): units not verified")
    probe = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"systemd-analyze does not run here: {probe.stderr.strip()}")
    return exe


def verify(exe: str, unit: Path, *, user: bool, runtime_dir: Path) -> list[str]:
    """Problems ``systemd-analyze verify`` reports about ``unit``; skips when
    the tool itself cannot work in this container."""
    runtime_dir.mkdir(mode=0o700, exist_ok=True)
    env = clean_env(XDG_RUNTIME_DIR=str(runtime_dir), SYSTEMD_PAGER="", SYSTEMD_COLORS="0")
    cmd = [exe, *(["--user"] if user else []), "verify", str(unit)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    text = (out.stdout + out.stderr).strip()
    # Unknown keys and bad values are warnings (exit 0): any line naming the
    # unit is a problem.
    problems = [line for line in text.splitlines() if unit.name in line]
    if out.returncode != 0 and not problems:
        pytest.skip(f"systemd-analyze verify cannot run in this container: {text[-300:]}")
    if out.returncode != 0:
        problems.append(f"exit status {out.returncode}")
    return problems


@pytest.mark.parametrize("mode", ["system", "user"])
def test_rendered_units_pass_systemd_analyze_verify(
        mode: str, tmp_path: Path, systemd_analyze: str, executables: tuple[Path, Path]):
    naosd, naosctl = executables
    unit = tmp_path / "naosd.service"
    unit.write_text(service.render("linux", mode, naosd=naosd, naosctl=naosctl,
                                   home=Path.home()))
    problems = verify(systemd_analyze, unit, user=mode == "user",
                      runtime_dir=tmp_path / "run")
    assert problems == []


def test_verify_catches_mistakes_and_accepts_quoted_paths(
        tmp_path: Path, systemd_analyze: str, executables: tuple[Path, Path]):
    spaced = tmp_path / "my naos"
    spaced.mkdir()
    for exe in executables:
        (spaced / exe.name).symlink_to(exe)
    unit = tmp_path / "naosd.service"
    text = service.render("linux", "system", naosd=spaced / "naosd",
                          naosctl=spaced / "naosctl", home=Path.home())
    unit.write_text(text)
    assert verify(systemd_analyze, unit, user=False, runtime_dir=tmp_path / "run") == []
    # The check is not vacuous: a typo and a missing executable are reported.
    unit.write_text(text.replace("PrivateTmp=", "PrivateTpm=")
                    .replace(str(spaced / "naosctl"), str(spaced / "missing")))
    problems = verify(systemd_analyze, unit, user=False, runtime_dir=tmp_path / "run")
    assert any("PrivateTpm" in p for p in problems), problems
    assert any("missing" in p for p in problems), problems


# ---------------------------------------------------------------------------
# naosctl service install / uninstall, as subprocesses
# ---------------------------------------------------------------------------


def test_install_dry_run_prints_the_file_and_writes_nothing(
        tmp_path: Path, executables: tuple[Path, Path]):
    naosd, naosctl = executables
    out = ctl("service", "install", "--user", "--dry-run", "--platform", "linux",
              home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"# {service.MARKER} --user")
    assert f"ExecStart={naosd}\n" in out.stdout
    assert f"ExecReload={naosctl} reload\n" in out.stdout
    target = tmp_path / "cfg/systemd/user/naosd.service"  # honours XDG_CONFIG_HOME
    assert f"would write {target}" in out.stderr
    assert "systemctl --user enable --now naosd" in out.stderr
    assert not (tmp_path / "cfg").exists()


def test_install_writes_the_unit_with_the_installed_naosd(
        tmp_path: Path, executables: tuple[Path, Path]):
    naosd, naosctl = executables
    units = tmp_path / "units"
    out = ctl("service", "install", "--user", "--unit-dir", str(units), "--platform", "linux",
              home=tmp_path)
    assert out.returncode == 0, out.stderr
    path = units / "naosd.service"
    assert f"wrote {path}" in out.stdout
    assert f"systemctl --user link {path}" in out.stdout  # not the standard directory
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    d = directives(path.read_text())
    exec_start = Path(d["ExecStart"][0])
    assert exec_start == naosd and exec_start.name == "naosd"
    assert exec_start.is_absolute() and os.access(exec_start, os.X_OK)
    assert d["ExecReload"] == [f"{naosctl} reload"]

    again = ctl("service", "install", "--unit-dir", str(units), "--platform", "linux",
                home=tmp_path)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_install_refuses_to_overwrite_a_different_file(
        tmp_path: Path, executables: tuple[Path, Path]):
    units = tmp_path / "units"
    units.mkdir()
    path = units / "naosd.service"
    path.write_text("[Service]\nExecStart=/usr/bin/mine\n")
    args = ("service", "install", "--unit-dir", str(units), "--platform", "linux")
    out = ctl(*args, home=tmp_path)
    assert out.returncode == 1 and "--force" in out.stderr
    assert path.read_text() == "[Service]\nExecStart=/usr/bin/mine\n"
    dry = ctl(*args, "--dry-run", home=tmp_path)
    assert dry.returncode == 0 and "needs --force" in dry.stderr
    forced = ctl(*args, "--force", home=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert f"replaced {path}" in forced.stdout
    assert f"ExecStart={executables[0]}\n" in path.read_text()


def test_uninstall_removes_the_unit_and_its_enable_links(
        tmp_path: Path, executables: tuple[Path, Path]):
    units = tmp_path / "units"
    where = ("--unit-dir", str(units), "--platform", "linux")
    assert ctl("service", "install", *where, home=tmp_path).returncode == 0
    wants = units / "default.target.wants"
    wants.mkdir()
    (wants / "naosd.service").symlink_to("../naosd.service")  # systemctl enable
    (units / "other.service").write_text("[Service]\n")

    out = ctl("service", "uninstall", *where, home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert not (units / "naosd.service").exists() and not wants.exists()
    assert (units / "other.service").exists()
    assert "systemctl --user stop naosd" in out.stdout

    again = ctl("service", "uninstall", *where, home=tmp_path)
    assert again.returncode == 0 and "nothing to remove" in again.stdout


def test_uninstall_leaves_files_it_did_not_write(tmp_path: Path):
    units = tmp_path / "units"
    units.mkdir()
    (units / "naosd.service").write_text("[Service]\nExecStart=/usr/bin/mine\n")
    where = ("--unit-dir", str(units), "--platform", "linux")
    out = ctl("service", "uninstall", *where, "--json", home=tmp_path)
    assert out.returncode == 1 and "not written by naosctl" in out.stderr
    assert (units / "naosd.service").exists()
    forced = ctl("service", "uninstall", *where, "--force", "--json", home=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["removed"] == [str(units / "naosd.service")]
    assert not (units / "naosd.service").exists()


def test_install_json(tmp_path: Path, executables: tuple[Path, Path]):
    units = tmp_path / "units"
    out = ctl("service", "install", "--unit-dir", str(units), "--platform", "linux", "--json",
              home=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["status"] == "written" and result["written"] is True
    assert result["mode"] == "user" and result["platform"] == "linux"
    assert result["path"] == str(units / "naosd.service")
    assert result["naosd"] == str(executables[0])
    assert result["content"] == (units / "naosd.service").read_text()
    assert result["enable"][-1] == "systemctl --user enable --now naosd"


def test_system_dry_run_says_the_naos_user_must_exist(
        tmp_path: Path, executables: tuple[Path, Path]):
    real = Path("/etc/systemd/system/naosd.service")
    existed = real.exists()
    out = ctl("service", "install", "--system", "--dry-run", "--platform", "linux", "--json",
              home=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["path"] == str(real) and result["written"] is False
    assert "User=naos\n" in result["content"]
    if not result["user_exists"]:
        assert any(c.startswith("useradd ") and c.endswith(" naos")
                   for c in result["prerequisites"])
    assert real.exists() == existed
    text = ctl("service", "install", "--system", "--dry-run", "--platform", "linux",
               home=tmp_path)
    assert text.returncode == 0
    assert "'naos' user and group" in text.stderr
    assert "systemctl enable --now naosd" in text.stderr


def test_naosctl_system_flag_selects_the_system_unit(
        tmp_path: Path, executables: tuple[Path, Path]):
    out = ctl("--system", "service", "install", "--unit-dir", str(tmp_path / "u"),
              "--platform", "linux", "--json", home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["mode"] == "system"
    assert "ExecReload=" in (tmp_path / "u/naosd.service").read_text()


def test_system_install_needs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   executables: tuple[Path, Path]):
    """In-process (as root there is nothing to refuse): a non-root euid, and
    the system directory moved into tmp_path in case the refusal fails."""
    from click.testing import CliRunner

    import naosctl.service_commands  # noqa: F401 - registers `service` on cli
    from naosctl.main import cli

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(service, "default_dir", lambda *_args: tmp_path / "etc")
    result = CliRunner().invoke(
        cli, ["service", "install", "--system", "--platform", "linux"])
    assert result.exit_code == 4, result.output
    assert "needs root" in result.output and "sudo " in result.output
    assert not (tmp_path / "etc").exists()
    dry = CliRunner().invoke(
        cli, ["service", "install", "--system", "--platform", "linux", "--dry-run"])
    assert dry.exit_code == 0, dry.output


def test_install_plist(tmp_path: Path, executables: tuple[Path, Path]):
    agents = tmp_path / "LaunchAgents"
    out = ctl("service", "install", "--platform", "darwin", "--unit-dir", str(agents),
              home=tmp_path)
    assert out.returncode == 0, out.stderr
    job = plistlib.loads((agents / "dev.naos.naosd.plist").read_bytes())
    assert job["ProgramArguments"] == [str(executables[0])]
    assert job["StandardErrorPath"] == str(tmp_path / "Library/Logs/naosd.log")
    assert f"launchctl bootstrap gui/{os.getuid()} " in out.stdout
    removed = ctl("service", "uninstall", "--platform", "darwin", "--unit-dir", str(agents),
                  home=tmp_path)
    assert removed.returncode == 0 and not (agents / "dev.naos.naosd.plist").exists()
    assert f"launchctl bootout gui/{os.getuid()}/dev.naos.naosd" in removed.stdout


def test_service_is_registered_on_naosctl():
    out = subprocess.run([sys.executable, "-m", "naosctl", "service", "install", "--help"],
                         capture_output=True, text=True, timeout=60, env=clean_env())
    assert out.returncode == 0, (
        "naosctl/main.py must import naosctl.service_commands:\n" + out.stderr)
    assert "--dry-run" in out.stdout and "--unit-dir" in out.stdout


def test_service_commands_stay_light():
    heavy = ("thespian", "wasmtime", "apsw", "aiohttp")
    code = ("import json, sys, naosctl.service_commands; "
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert json.loads(out.stdout) == []
