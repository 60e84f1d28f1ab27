#!/usr/bin/env bash
# Build naos as one file: dist/naos (docs/architecture.md, "One file").
#
#   bash deploy/build-bundle.sh [-o OUT]        PYTHON=python3.11 selects the interpreter
#
# The file is a PEX zipapp (pex, pinned in the `bundle` extra) holding naos and
# the platform's wheels of every dependency.  It needs a CPython of the same
# minor version as the one that built it on the target, and no virtualenv: on
# its first run it lays itself out as a virtualenv under $PEX_ROOT (default
# ~/.cache/pex) and from then on starts that directly.  naosd runs from the
# virtualenv's own interpreter, so what it starts as `sys.executable -m ...`
# (agent handler hosts, the local LLM server) finds naos as in an install.
#
# Resolution is from a throwaway virtualenv where pip installed naos (a wheel
# built from a copy of this work tree) and its dependencies, so the bundle holds
# the versions pip picks with the machine's configuration; nothing is reused
# across builds and nothing is left in the tree but OUT.
set -euo pipefail
usage="usage: bash deploy/build-bundle.sh [-o OUT]"
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        -o|--output)
            [ $# -ge 2 ] && [ -n "$2" ] || { echo "build-bundle.sh: $1 needs a path; $usage" >&2; exit 2; }
            out="$2"; shift 2 ;;
        -h|--help) sed -n '/^set -euo/q;2,$s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "build-bundle.sh: unknown argument: $1; $usage" >&2; exit 2 ;;
    esac
done
case "$out" in
    "") out="$(cd "$(dirname "$0")/.." && pwd)/dist/naos" ;;
    /*) ;;
    *) out="$PWD/$out" ;;  # relative to where it was called from
esac
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
version="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
work="$(mktemp -d "${TMPDIR:-/tmp}/naos-bundle.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# Build from a copy of the tree (what git tracks or would track): pip's in-tree
# build would leave build/ behind, and a module deleted since could ship from it.
mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard \
    | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C "$work/src"
"$py" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$work/src[bundle]"
mkdir -p "$(dirname "$out")"
# --venv: a virtualenv at first run, so sys.executable is an interpreter that
#   imports naos even with -I (the handler host's isolated mode);
# --venv-site-packages-copies: real files (hard links) in its site-packages, not
#   symlinks into PEX_ROOT, so a confined handler's Landlock rules, which grant
#   what paths resolve to, cover what it imports;
# --sh-boot: /bin/sh finds the laid-out virtualenv, one interpreter start;
# --runtime-pex-root: one extraction place whatever XDG_CACHE_HOME says.
"$work/venv/bin/pex" naos --venv-repository "$work/venv" --console-script naos \
    --venv --venv-site-packages-copies --sh-boot --runtime-pex-root '~/.cache/pex' \
    --pex-root "$work/pex-root" --output-file "$out"
echo "built $out ($(du -h "$out" | cut -f1), CPython $version)"
