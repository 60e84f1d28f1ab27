"""Start a confined child: a fresh interpreter holding nothing of naosd's.

``launch`` fork+execs ``sys.executable -I -B -m MODULE SPEC ARGS...`` with
the exact environment of the policy (nothing inherited: no NAOS_*, no
THESPIAN_*, no secrets), its cwd, stdin from /dev/null, stdout and stderr to
the given log descriptor or /dev/null, every descriptor closed but the one
channel, and a new session. No ``preexec_fn``: the kernel layers are applied
by the child's own bootstrap (``bootstrap.apply``) before it imports agent
code, so the parent can be multi-threaded and the fast vfork path is used.

The child gets SIGKILL when the *thread* that launched it exits (Linux ties
the parent-death signal to the thread): launch from a thread that lives as
long as the handler should."""

from __future__ import annotations

import importlib.util
import os
import site
import subprocess
import sys
import sysconfig
from collections.abc import Sequence

from naosd.runtime.confine.bootstrap import Layers, Spec
from naosd.runtime.confine.errors import ConfinementUnavailable
from naosd.runtime.confine.policy import Confinement
from naosd.runtime.confine.support import Support, probe

# naos's own top-level packages: the child imports its host module from them
# (``naos``: the handler's host, where it is installed; absent ones are skipped).
NAOS_PACKAGES = ("naos", "naosd", "actors")


def launch(conf: Confinement, module: str, args: Sequence[str] = (), *,
           channel_fd: int | None = None, log_fd: int | None = None,
           support: Support | None = None) -> subprocess.Popen[bytes]:
    """Start ``module`` confined by ``conf``; returns the running child.

    Raises InvalidRequest for a policy that does not validate and
    ConfinementUnavailable when ``conf`` is "full" and the kernel (``support``,
    by default this machine's probe) lacks a mechanism. A child whose
    bootstrap fails exits with ``EXIT_CONFINEMENT_FAILED``, its reason on the
    log descriptor."""
    conf = conf.validated()
    layers = layers_for(conf, support if support is not None else probe())
    keep = () if channel_fd is None else (channel_fd,)
    spec = Spec(conf, os.getpid(), keep, layers)
    output: int = subprocess.DEVNULL if log_fd is None else log_fd
    return subprocess.Popen(
        [sys.executable, "-I", "-B", "-m", module, spec.encode(), *args],
        stdin=subprocess.DEVNULL, stdout=output, stderr=output, env=conf.environ(),
        cwd=conf.cwd, close_fds=True, pass_fds=keep, start_new_session=True)


def layers_for(conf: Confinement, support: Support) -> Layers:
    """The layers a child under ``conf`` gets on a machine with ``support``.

    Raises ConfinementUnavailable when ``conf`` asks for "full" and the kernel
    lacks a mechanism it needs."""
    if conf.mode == "none":
        return Layers()
    missing = support.missing()
    if missing:
        raise ConfinementUnavailable(
            "this kernel cannot confine agent code (missing: " + ", ".join(missing)
            + "); only a definition with confinement = \"none\" can run here")
    return Layers(support.landlock_abi, True, support.user_ns,
                  support.user_ns and support.net_ns and not conf.net)


def interpreter_paths() -> tuple[str, ...]:
    """What the child's interpreter reads after its start: the standard
    library and its extension modules, the site-packages of the venv and of
    the base installation, the interpreter binary and the shared libpython,
    and naos's own packages (an editable install keeps them outside
    site-packages)."""
    paths: list[str] = []
    for scheme_vars in ({}, {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}):
        found = sysconfig.get_paths(vars=scheme_vars)
        paths += [found[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")]
    paths += site.getsitepackages()
    # Executable (read paths carry execute): a handler allowed processes can
    # start the same interpreter (multiprocessing's "spawn"), confined as well.
    paths += [sys.executable, os.path.join(sys.prefix, "pyvenv.cfg")]
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and soname:
        paths.append(os.path.join(libdir, soname))
    paths += _package_dirs(NAOS_PACKAGES)
    # Resolved: Landlock grants what a path resolves to, and the policy's
    # check against protected paths must see the same thing.
    return tuple(dict.fromkeys(os.path.realpath(p) for p in paths if os.path.exists(p)))


def _package_dirs(names: Sequence[str]) -> list[str]:
    """Where the packages ``names`` are installed (found, not imported)."""
    dirs: list[str] = []
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            dirs += list(spec.submodule_search_locations)
    return dirs
