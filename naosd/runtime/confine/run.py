"""``python -I -B -m naosd.runtime.confine.run SPEC SCRIPT [ARGS...]``: run one
Python file under the confinement in SPEC.

The smallest host module: confine first, then run SCRIPT as ``__main__``
with ``sys.argv = [SCRIPT, *ARGS]``. The tests' hostile agents and the
benchmark use it; an agent host module starts the same way."""

from __future__ import annotations

import runpy
import sys

from naosd.runtime.confine.bootstrap import confine_from_argv


def main() -> None:
    _, rest = confine_from_argv(sys.argv[1:])
    if not rest:
        sys.exit("usage: python -m naosd.runtime.confine.run SPEC SCRIPT [ARGS...]")
    sys.argv = list(rest)
    runpy.run_path(rest[0], run_name="__main__")


if __name__ == "__main__":
    main()
