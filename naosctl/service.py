"""Service-manager files for naosd: systemd units (system and user) and a
launchd plist.  Pure rendering and path logic for ``naosctl service``; the
click commands and the file writing live in ``naosctl/service_commands.py``.

The templates below are the files in ``deploy/`` byte for byte (a test keeps
them identical): they are embedded because an installed wheel has no
``deploy/``.  Placeholders, replaced when rendering:

=============  ============================================================
``@NAOSD@``    absolute path of the ``naosd`` executable
``@NAOSCTL@``  absolute path of ``naosctl`` (systemd ``ExecReload=``)
``@LOG_DIR@``  launchd only: directory of ``naosd.log``
=============  ============================================================

Stdlib only: naosctl must start fast (no thespian, apsw, aiohttp, wasmtime).
"""

from __future__ import annotations

import os
import plistlib
import shlex
import shutil
import stat
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from naosd.errors import InvalidRequest, NaosError, NotFound, PermissionDenied

PLATFORMS = ("linux", "darwin")
MODES = ("user", "system")
LABEL = "dev.naos.naosd"
UNIT_NAME = "naosd.service"
PLIST_NAME = f"{LABEL}.plist"
SERVICE_USER = "naos"
#: First line of every installed file; uninstall only removes files with it.
MARKER = "Written by naosctl service install"
#: macOS has no /run: the system daemon keeps its socket under its state dir.
MACOS_SYSTEM_SOCKET = "/var/lib/naos/run/naosd.sock"
#: ProtectHome=yes makes these invisible to the system service.
PROTECTED_HOMES = (Path("/home"), Path("/root"), Path("/run/user"))

SYSTEMD_SYSTEM_TEMPLATE = """\
# naosd as a system service, running as the unprivileged "naos" user.
#
# This is a template.  `naosctl service install --system` fills in the
# placeholders with this machine's paths and writes
# /etc/systemd/system/naosd.service:
#
#   @NAOSD@    absolute path of the naosd executable (e.g. /opt/naos/bin/naosd)
#   @NAOSCTL@  absolute path of the naosctl executable (e.g. /opt/naos/bin/naosctl)
#
# To install it by hand, replace both, create the user and group:
#   useradd --system --user-group --home-dir /var/lib/naos --shell /usr/sbin/nologin naos
# then run `systemctl daemon-reload && systemctl enable --now naosd`.
# naosd must live outside /home and /root (ProtectHome=) and be readable by "naos".
[Unit]
Description=naos daemon (agent runtime)
After=network.target
StartLimitIntervalSec=60
StartLimitBurst=5

[Service]
Type=notify
NotifyAccess=main
ExecStart=@NAOSD@ --system
# naosctl reload returns only once the new configuration is applied (or
# fails, and so does the reload job).
ExecReload=@NAOSCTL@ --system reload
User=naos
Group=naos
# /run/naos, /var/lib/naos and /etc/naos; naosd reads them from
# $RUNTIME_DIRECTORY, $STATE_DIRECTORY and $CONFIGURATION_DIRECTORY.
RuntimeDirectory=naos
RuntimeDirectoryMode=0750
StateDirectory=naos
StateDirectoryMode=0700
ConfigurationDirectory=naos
UMask=0077
# The audit key (docs/security.md) lives beside the config, outside the state
# dir. /etc/naos belongs to root, so the key is made here, with full privileges
# ("+"), the first time; naosd refuses to start without it.
ExecStartPre=+/bin/sh -c 'test -s /etc/naos/audit.key || (umask 077 && \\
    od -An -vtx1 -N32 /dev/urandom | tr -d "[:space:]" > /etc/naos/audit.key && \\
    chown naos:naos /etc/naos/audit.key)'
Environment=PYTHONUNBUFFERED=1
# naosd pings at half this interval; a hung event loop gets restarted.
WatchdogSec=30
Restart=on-failure
RestartSec=2
# Exit status 6 is a configuration error: restarting will not fix it.
RestartPreventExitStatus=6
TimeoutStopSec=30
# SIGTERM to naosd only: it stops its actors and agents itself; whatever is
# left after TimeoutStopSec gets SIGKILL.
KillMode=mixed

# Hardening.  Not set on purpose: MemoryDenyWriteExecute= (the WebAssembly JIT
# needs writable+executable memory) and SystemCallFilter= (agents run
# arbitrary Python; test @system-service on your host before adding it).
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectProc=invisible
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
RemoveIPC=yes
# AF_NETLINK: getaddrinfo() asks the kernel which address families are up.
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK

[Install]
WantedBy=multi-user.target
"""

SYSTEMD_USER_TEMPLATE = """\
# naosd as a per-user service (systemd --user).
#
# This is a template.  `naosctl service install --user` fills in the
# placeholders with this machine's paths and writes
# $XDG_CONFIG_HOME/systemd/user/naosd.service (~/.config/systemd/user):
#
#   @NAOSD@    absolute path of the naosd executable (e.g. ~/.venv/bin/naosd, expanded)
#   @NAOSCTL@  absolute path of the naosctl executable
#
# To install it by hand, replace both, then run
# `systemctl --user daemon-reload && systemctl --user enable --now naosd`
# (and `loginctl enable-linger $USER` to keep it running while logged out).
[Unit]
Description=naos daemon (agent runtime, per user)
StartLimitIntervalSec=60
StartLimitBurst=5

[Service]
Type=notify
NotifyAccess=main
ExecStart=@NAOSD@
# naosctl reload returns only once the new configuration is applied (or
# fails, and so does the reload job).
ExecReload=@NAOSCTL@ reload
# $XDG_RUNTIME_DIR/naos: where naosd puts its socket by default.  No
# StateDirectory=: in user units it means ~/.config on older systemd, while
# naosd keeps its state in $XDG_STATE_HOME/naos.
RuntimeDirectory=naos
RuntimeDirectoryMode=0700
UMask=0077
Environment=PYTHONUNBUFFERED=1
# naosd pings at half this interval; a hung event loop gets restarted.
WatchdogSec=30
Restart=on-failure
RestartSec=2
# Exit status 6 is a configuration error: restarting will not fix it.
RestartPreventExitStatus=6
TimeoutStopSec=30
# SIGTERM to naosd only: it stops its actors and agents itself; whatever is
# left after TimeoutStopSec gets SIGKILL.
KillMode=mixed
# Hardening that works without privileges.  The file-system sandboxing of the
# system unit (ProtectSystem=, PrivateTmp=, ...) needs user namespaces in a
# user unit, and a per-user naos works in your home anyway.
NoNewPrivileges=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes

[Install]
WantedBy=default.target
"""

LAUNCHD_TEMPLATE = """\
<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!--
  naosd as a launchd job.

  This is a template.  `naosctl service install` fills in the placeholders
  with this machine's paths:

    @NAOSD@    absolute path of the naosd executable
    @LOG_DIR@  absolute directory for naosd.log (~/Library/Logs, expanded, for
               an agent; /Library/Logs/naos for the daemon)

  and writes ~/Library/LaunchAgents/dev.naos.naosd.plist (a per-user agent),
  or /Library/LaunchDaemons/dev.naos.naosd.plist (the system daemon: naosd in
  system mode, UserName and GroupName "naos", and NAOS_SOCKET set because
  macOS has no /run).

  By hand: replace the placeholders, copy it to ~/Library/LaunchAgents and run
  launchctl bootstrap gui/$(id -u) ~/Library/LaunchAgents/dev.naos.naosd.plist
-->
<plist version="1.0">
<dict>
    <key>Label</key>
    <string>dev.naos.naosd</string>
    <key>ProgramArguments</key>
    <array>
        <string>@NAOSD@</string>
    </array>
    <key>RunAtLoad</key>
    <true/>
    <key>KeepAlive</key>
    <dict>
        <key>SuccessfulExit</key>
        <false/>
    </dict>
    <key>ThrottleInterval</key>
    <integer>10</integer>
    <key>ExitTimeOut</key>
    <integer>30</integer>
    <key>Umask</key>
    <integer>63</integer>
    <key>EnvironmentVariables</key>
    <dict>
        <key>PYTHONUNBUFFERED</key>
        <string>1</string>
    </dict>
    <key>StandardOutPath</key>
    <string>@LOG_DIR@/naosd.log</string>
    <key>StandardErrorPath</key>
    <string>@LOG_DIR@/naosd.log</string>
</dict>
</plist>
"""

#: deploy/<path> -> template text.
TEMPLATES = {
    "systemd/naosd.service": SYSTEMD_SYSTEM_TEMPLATE,
    "systemd/naosd-user.service": SYSTEMD_USER_TEMPLATE,
    "launchd/dev.naos.naosd.plist": LAUNCHD_TEMPLATE,
}


# ---------------------------------------------------------------------------
# Where things are
# ---------------------------------------------------------------------------


def current_platform(sys_platform: str = sys.platform) -> str:
    """``linux`` (systemd) or ``darwin`` (launchd); NaosError elsewhere."""
    if sys_platform.startswith("linux"):
        return "linux"
    if sys_platform == "darwin":
        return "darwin"
    raise NaosError(
        f"naosctl service knows systemd (Linux) and launchd (macOS), not {sys_platform}")


def _check(platform: str, mode: str) -> None:
    if platform not in PLATFORMS:
        raise InvalidRequest(f"platform must be one of {', '.join(PLATFORMS)}, got {platform!r}")
    if mode not in MODES:
        raise InvalidRequest(f"mode must be user or system, got {mode!r}")


def file_name(platform: str) -> str:
    return UNIT_NAME if platform == "linux" else PLIST_NAME


def default_dir(platform: str, mode: str, environ: Mapping[str, str], home: Path) -> Path:
    """The directory the service manager loads ``mode`` services from."""
    _check(platform, mode)
    if platform == "darwin":
        return Path("/Library/LaunchDaemons") if mode == "system" else (
            home / "Library" / "LaunchAgents")
    if mode == "system":
        return Path("/etc/systemd/system")
    xdg = environ.get("XDG_CONFIG_HOME", "")
    # The XDG spec says to ignore a relative value.
    config = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".config"
    return config / "systemd" / "user"


def target_path(platform: str, mode: str, environ: Mapping[str, str], home: Path,
                unit_dir: Path | None = None) -> Path:
    """Where the file goes: ``unit_dir`` if given, else the manager's directory."""
    directory = unit_dir if unit_dir is not None else default_dir(platform, mode, environ, home)
    return Path(os.path.abspath(directory)) / file_name(platform)


def launchd_log_dir(mode: str, home: Path) -> Path:
    return Path("/Library/Logs/naos") if mode == "system" else home / "Library" / "Logs"


def find_executable(name: str, *, executable: str | None = None,
                    which: Callable[[str], str | None] = shutil.which) -> Path:
    """``name`` next to the running interpreter (the venv's bin dir), else on
    PATH.  Not resolved: a venv's bin path stays valid across upgrades."""
    candidates: list[Path] = []
    interpreter = sys.executable if executable is None else executable
    if interpreter:
        candidates.append(Path(os.path.abspath(interpreter)).parent / name)
    found = which(name)
    if found:
        candidates.append(Path(os.path.abspath(found)))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    where = f"next to {interpreter} or " if interpreter else ""
    raise NotFound(f"cannot find {name} {where}on PATH; pass --{name} PATH")


def check_executable(path: Path) -> Path:
    """An explicitly given executable: made absolute, must exist and be executable."""
    path = Path(os.path.abspath(path))
    if not path.is_file():
        raise NotFound(f"{path}: no such file")
    if not os.access(path, os.X_OK):
        raise PermissionDenied(f"{path}: not executable")
    return path


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def strip_template_comment(template: str) -> str:
    """Drop the leading comment block (the template's own documentation)."""
    lines = template.splitlines(keepends=True)
    start = 0
    while start < len(lines) and lines[start].startswith("#"):
        start += 1
    return "".join(lines[start:])


def systemd_exec_path(path: Path) -> str:
    """``path`` as the first word of ``ExecStart=``: ``%`` doubled (specifiers),
    quoted if it holds whitespace; characters that would need more escaping
    than that are refused."""
    text = str(path)
    if not path.is_absolute():
        raise InvalidRequest(f"{text}: must be an absolute path")
    bad = sorted(set(text) & set("\"'\\$\n\r\t;"))
    if bad:
        raise InvalidRequest(
            f"{text}: cannot go into a systemd unit (contains {' '.join(map(repr, bad))})")
    text = text.replace("%", "%%")
    return f'"{text}"' if " " in text else text


def render_systemd(mode: str, *, naosd: Path, naosctl: Path) -> str:
    _check("linux", mode)
    template = SYSTEMD_SYSTEM_TEMPLATE if mode == "system" else SYSTEMD_USER_TEMPLATE
    body = strip_template_comment(template)
    body = body.replace("@NAOSD@", systemd_exec_path(naosd))
    body = body.replace("@NAOSCTL@", systemd_exec_path(naosctl))
    user = " --user" if mode == "user" else ""
    header = (
        f"# {MARKER} --{mode}, from naos's deploy/systemd template.\n"
        f"# Reinstall it (with --force) rather than editing it; local changes belong in\n"
        f"# a drop-in: systemctl{user} edit naosd\n"
    )
    return header + body


def _substitute(value: Any, mapping: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        for key, replacement in mapping.items():
            value = value.replace(key, replacement)
        return value
    if isinstance(value, list):
        return [_substitute(v, mapping) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, mapping) for k, v in value.items()}
    return value


def render_launchd(mode: str, *, naosd: Path, log_dir: Path) -> str:
    """The plist: values go in through plistlib, so no XML escaping issues."""
    _check("darwin", mode)
    for path in (naosd, log_dir):
        if not path.is_absolute():
            raise InvalidRequest(f"{path}: must be an absolute path")
    job = plistlib.loads(LAUNCHD_TEMPLATE.encode())
    job = _substitute(job, {"@NAOSD@": str(naosd), "@LOG_DIR@": str(log_dir)})
    if mode == "system":
        job["ProgramArguments"].append("--system")
        job["UserName"] = SERVICE_USER
        job["GroupName"] = SERVICE_USER
        job.setdefault("EnvironmentVariables", {})["NAOS_SOCKET"] = MACOS_SYSTEM_SOCKET
    text = plistlib.dumps(job, sort_keys=False).decode()
    comment = f"<!-- {MARKER} ({mode}); reinstall it rather than editing it. -->\n"
    return text.replace("<plist ", comment + "<plist ", 1)


def render(platform: str, mode: str, *, naosd: Path, naosctl: Path | None,
           home: Path) -> str:
    """The file ``naosctl service install`` writes for ``platform`` and ``mode``
    (``naosctl`` is needed for systemd's ``ExecReload=`` only)."""
    _check(platform, mode)
    if platform == "linux":
        if naosctl is None:
            raise InvalidRequest("the systemd unit needs the naosctl path (ExecReload=)")
        return render_systemd(mode, naosd=naosd, naosctl=naosctl)
    return render_launchd(mode, naosd=naosd, log_dir=launchd_log_dir(mode, home))


def written_by_us(text: str) -> bool:
    return MARKER in text


# ---------------------------------------------------------------------------
# What to tell the user
# ---------------------------------------------------------------------------


def _systemctl(mode: str) -> str:
    return "systemctl --user" if mode == "user" else "systemctl"


def enable_commands(platform: str, mode: str, path: Path, *, default_location: bool,
                    uid: int) -> list[str]:
    """Commands that load, enable and start the installed file."""
    _check(platform, mode)
    if platform == "darwin":
        domain = "system" if mode == "system" else f"gui/{uid}"
        return [f"launchctl bootstrap {domain} {shlex.quote(str(path))}"]
    systemctl = _systemctl(mode)
    commands = [] if default_location else [f"{systemctl} link {shlex.quote(str(path))}"]
    commands += [f"{systemctl} daemon-reload", f"{systemctl} enable --now naosd"]
    return commands


def disable_commands(platform: str, mode: str, *, uid: int) -> list[str]:
    """Commands that stop a service whose file is already gone."""
    _check(platform, mode)
    if platform == "darwin":
        domain = "system" if mode == "system" else f"gui/{uid}"
        return [f"launchctl bootout {domain}/{LABEL}"]
    systemctl = _systemctl(mode)
    return [f"{systemctl} stop naosd", f"{systemctl} daemon-reload"]


def account_commands(platform: str) -> list[str]:
    """Commands that create the ``naos`` user and group the system service runs as."""
    if platform == "linux":
        return ["useradd --system --user-group --home-dir /var/lib/naos "
                f"--shell /usr/sbin/nologin {SERVICE_USER}"]
    # 450: any id below 500 that `dscl . -list /Users UniqueID` does not show.
    return [
        f"dscl . -create /Groups/{SERVICE_USER} PrimaryGroupID 450",
        f"dscl . -create /Users/{SERVICE_USER} UniqueID 450",
        f"dscl . -create /Users/{SERVICE_USER} PrimaryGroupID 450",
        f"dscl . -create /Users/{SERVICE_USER} UserShell /usr/bin/false",
        f"dscl . -create /Users/{SERVICE_USER} NFSHomeDirectory /var/lib/naos",
    ]


def directory_commands(platform: str, mode: str) -> list[str]:
    """Directories the service manager does not create (launchd creates none)."""
    if platform != "darwin" or mode != "system":
        return []
    owner = f"-o {SERVICE_USER} -g {SERVICE_USER}"
    return [f"install -d {owner} -m 0700 /var/lib/naos",
            f"install -d {owner} -m 0750 {launchd_log_dir('system', Path('/'))}"]


def _interpreter(script: Path) -> Path | None:
    """The ``#!`` interpreter of a script, if it names an absolute path."""
    try:
        with script.open("rb") as fh:
            first = fh.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    return Path(words[0]) if words and words[0].startswith("/") else None


def _unreachable(path: Path) -> Path | None:
    """The first directory on the way to ``path`` that others cannot search."""
    for parent in reversed(path.parents):
        try:
            mode = parent.stat().st_mode
        except OSError:
            return parent
        if not mode & stat.S_IXOTH:
            return parent
    return None


def reachability_warnings(platform: str, mode: str, executables: list[Path]) -> list[str]:
    """Why the system service (user ``naos``, ProtectHome=yes) could not run
    these executables, their symlink targets or their ``#!`` interpreters."""
    if mode != "system":
        return []
    seen: set[Path] = set()
    warnings: list[str] = []
    for exe in executables:
        interpreter = _interpreter(exe.resolve())
        chain = [exe, exe.resolve()]
        if interpreter is not None:
            chain += [interpreter, interpreter.resolve()]
        for path in chain:
            if path in seen:
                continue
            seen.add(path)
            home = next((h for h in PROTECTED_HOMES if path.is_relative_to(h)), None)
            if platform == "linux" and home is not None:
                warnings.append(
                    f"{path} is under {home}, which ProtectHome=yes hides from the service: "
                    "install naos outside home directories (e.g. a venv in /opt/naos)")
                continue
            blocked = _unreachable(path)
            if blocked is not None:
                warnings.append(f"{blocked} is not searchable by other users, so the "
                                f"{SERVICE_USER} user cannot run {path}")
    return warnings


def root_required(mode: str, unit_dir: Path | None, euid: int) -> bool:
    """Writing to the system service directory needs root."""
    return mode == "system" and unit_dir is None and euid != 0
