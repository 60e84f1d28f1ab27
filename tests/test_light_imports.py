from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("thespian", "wasmtime", "apsw", "aiohttp")


def test_naosctl_does_not_import_heavy_modules():
    code = ("import json, sys, naosctl.main, naosctl.client; "
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert json.loads(out.stdout) == []
