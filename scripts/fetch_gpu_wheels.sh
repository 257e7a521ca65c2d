#!/usr/bin/env bash
# Download into .whl/ the Python packages a lent H200 machine lacks, as wheels for CPython 3.12
# on x86-64 manylinux, so `scripts/gpu_evidence.sh` can install the project there offline.
#
#   bash scripts/fetch_gpu_wheels.sh            # here, in the repo root, with PyPI reachable
#
# That machine (the device tool's KINDS.md) has torch, numpy, scipy, numba, tokenizers, pyyaml,
# tqdm, pytest and hypothesis, but not pydantic (with pydantic-core, annotated-types and
# typing-inspection), simpy or plotly, and it reaches no registry. typing-extensions and
# narwhals are there too, in versions nobody has read; pydantic-core and plotly need recent
# ones, so they travel as well (installed into a --target folder, they shadow the machine's
# only for the commands that put that folder on PYTHONPATH).
#
# Versions: the ones this checkout's .venv uses (`make setup`), else the fallbacks below.
# One version of each package: two wheels of one name stop the whole install there.
# The wheels travel with the working tree (64 MiB a call in all): the script fails above
# MAX_MIB. .whl/ is ignored by the repo's .gitignore.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${DEST:-.whl}
MAX_MIB=${MAX_MIB:-24}
VENV_PY=${VENV_PY:-.venv/bin/python}
PIP_PY=${PIP_PY:-$([ -x "$VENV_PY" ] && echo "$VENV_PY" || echo python3)}

# name=fallback version (what the project was last tested with)
PACKAGES=(
  pydantic=2.14.4
  pydantic-core=2.50.5
  annotated-types=0.8.0
  typing-inspection=0.4.5
  typing-extensions=4.16.0
  simpy=4.1.2
  plotly=7.1.0
  narwhals=2.29.0
)
# Packages the machine already has (KINDS.md, 2026-11-17), normalised names: a Requires-Dist
# on one of these needs no wheel.
ON_DEVICE=" numpy scipy numba llvmlite tokenizers pyyaml tqdm pytest hypothesis packaging torch
  typing-extensions narwhals attrs sortedcontainers pluggy iniconfig pygments six python-dateutil
  filelock fsspec jinja2 markupsafe networkx sympy mpmath setuptools triton huggingface-hub "

norm() { echo "$1" | tr 'A-Z_.' 'a-z--'; }

version_here() {  # the venv's version of $1, empty if not installed there
  [ -x "$VENV_PY" ] || return 0
  "$VENV_PY" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$1" 2>/dev/null || true
}

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
CARRIED=" "
for entry in "${PACKAGES[@]}"; do
  name=${entry%%=*}
  fallback=${entry#*=}
  version=$(version_here "$name")
  version=${version:-$fallback}
  CARRIED+="$(norm "$name") "
  echo "fetch $name==$version" >&2
  "$PIP_PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$DEST" "$name==$version"
done

# One wheel per name.
dupes=$(ls "$DEST"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z_.' 'a-z--' | sort | uniq -d)
if [ -n "$dupes" ]; then
  echo "error: more than one wheel of: $dupes" >&2
  exit 1
fi

# Requires-Dist of every wheel (extras skipped) must be carried or already on the machine.
missing=""
for whl in "$DEST"/*.whl; do
  reqs=$(unzip -p "$whl" '*.dist-info/METADATA' | grep '^Requires-Dist:' | grep -v 'extra ==' \
         | sed -E 's/^Requires-Dist: *([A-Za-z0-9_.-]+).*/\1/' || true)
  for r in $reqs; do
    n=$(norm "$r")
    case "$CARRIED$ON_DEVICE" in
      *" $n "*) ;;
      *) missing+=" $n (needed by $(basename "$whl"))" ;;
    esac
  done
done
if [ -n "$missing" ]; then
  echo "error: requirements neither carried nor on the H200 machine:$missing" >&2
  exit 1
fi

# The commit the wheels were fetched for (the device's copy of the tree has no .git; refresh
# this file right before a device run: docs/validation.md, "GPU evidence").
git describe --always --dirty > "$DEST/commit.txt" 2>/dev/null || true

total_kib=$(du -sk "$DEST" | cut -f1)
ls -l "$DEST"/*.whl | awk '{printf "%8.1f KiB  %s\n", $5 / 1024, $9}'
echo "total: $((total_kib / 1024)).$(( (total_kib % 1024) * 10 / 1024 )) MiB in $DEST (limit $MAX_MIB MiB)"
if [ "$total_kib" -gt $((MAX_MIB * 1024)) ]; then
  echo "error: wheels exceed $MAX_MIB MiB" >&2
  exit 1
fi
