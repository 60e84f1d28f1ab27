"""Run mypy (strict, configured in pyproject.toml) and fail on any error that the
checked-in baseline does not list.

- The pure modules (PURE below) must have no error at all: never baselined.
- Everywhere else an error is compared without its line number ("path: message
  [code]", counted), so moving code does not break the check; an error that is
  new, or one more of a kind than the baseline holds, fails.
- Errors fixed since the baseline was written are reported; ``--update``
  rewrites the baseline from the current run (only ever to remove lines: it
  refuses to add any). ``--create`` writes the first baseline (refused when one
  with entries exists).

Usage: python .ci/mypy_baseline.py [--update | --create]
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / ".ci" / "mypy-baseline.txt"
PURE = (
    "actors/domain/", "actors/messages.py", "actors/wasm/limits.py",
    "naosd/errors/", "naosd/config.py", "naosd/storage/audit.py",
    "naosd/dashboard/metrics_fold.py",
    "naosd/runtime/procs.py", "naosd/runtime/proctable.py", "naosd/runtime/admin_port.py",
    "naosd/runtime/leftovers.py",
    "naosctl/render.py", "naosctl/broker_render.py", "naosctl/render_trust.py",
)
ERROR = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: (?P<message>.*)$")


def run_mypy() -> list[tuple[str, str]]:
    """(key, the line as mypy printed it) for every error."""
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-pretty", "--no-error-summary",
         "--show-error-codes", "--hide-error-context"],
        cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode not in (0, 1) or proc.stderr.strip():
        sys.exit(f"mypy failed to run (exit {proc.returncode}):\n{proc.stderr}{proc.stdout}")
    errors = []
    for line in proc.stdout.splitlines():
        found = ERROR.match(line)
        if found:
            message = re.sub(r"\bline \d+\b", "line N", found["message"].strip())
            errors.append((f"{found['path']}: {message}", line))
    return errors


def read_baseline() -> Counter[str]:
    if not BASELINE.exists():
        return Counter()
    lines = BASELINE.read_text(encoding="utf-8").splitlines()
    return Counter(line for line in lines if line and not line.startswith("#"))


def main(argv: list[str]) -> int:
    errors = run_mypy()
    baseline = read_baseline()
    current = Counter(key for key, _ in errors)
    pure = [line for key, line in errors if key.startswith(PURE)]
    budget = Counter(baseline)
    new = []
    for key, line in errors:
        if budget[key] > 0 and not key.startswith(PURE):
            budget[key] -= 1
        else:
            new.append(line)
    fixed = baseline - current
    if "--create" in argv and baseline:
        print("a baseline exists: use --update (it only shrinks)", file=sys.stderr)
        return 1
    if "--update" in argv or "--create" in argv:
        if pure or (new and "--create" not in argv):
            print("refusing to add errors to the baseline:", *(pure or new), sep="\n",
                  file=sys.stderr)
            return 1
        header = "# mypy errors tolerated outside the pure modules (.ci/mypy_baseline.py)\n"
        BASELINE.write_text(header + "".join(f"{k}\n" for k in sorted(current.elements())),
                            encoding="utf-8")
        print(f"baseline: {sum(current.values())} errors ({sum(fixed.values())} removed)")
        return 0
    if fixed:
        print(f"mypy: {sum(fixed.values())} baseline errors are fixed; shrink the baseline "
              "with: python .ci/mypy_baseline.py --update")
    if new:
        what = "in a pure module (must stay at zero)" if pure else "not in the baseline"
        print(f"mypy: {len(new)} errors {what}:", *new, sep="\n", file=sys.stderr)
        return 1
    print(f"mypy: ok ({sum(current.values())} baselined errors, pure modules clean)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
