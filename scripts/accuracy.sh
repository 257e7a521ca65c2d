#!/usr/bin/env bash
# Reproduce the accuracy figures of README.md and docs/validation.md the way a stranger would:
# a fresh clone, its own .venv (make setup), an empty calibration cache, then
#   calibrate --quick -> validate --quick      (the CI gate's path)
#   calibrate         -> validate              (the full grid)
# Writes OUT/{quick,full}/{profile.yaml,validation.json,validation.html,...} and prints one
# summary line per grid (median, p90, coverage, exposed-lookup error, the machine's drift and
# the drift-controlled median). validate exits 1 above its threshold; that is a result here,
# not a failure of the script.
#
#   bash scripts/accuracy.sh [REPO (default .)] [OUT (default out/accuracy)]
#
# About 8-10 minutes on a 2-core machine. Run it on a quiet machine: calibrate warns when other
# work shared the cores.
set -euo pipefail
REPO=$(cd "${1:-.}" && pwd)
OUT=$(mkdir -p "${2:-out/accuracy}" && cd "${2:-out/accuracy}" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
git clone -q "$REPO" "$WORK/repo"
cd "$WORK/repo"
make -s setup >/dev/null
PY="$WORK/repo/.venv/bin/python"
export XDG_CACHE_HOME="$WORK/cache"   # empty: every measurement is taken again
echo "code: $(git describe --always --dirty), $(date -u +%FT%TZ)"
for grid in quick full; do
  flag=$([ "$grid" = quick ] && echo --quick || true)
  mkdir -p "$OUT/$grid"
  "$PY" -m planner calibrate $flag --out "$OUT/$grid/profile.yaml" > "$OUT/$grid/calibrate.txt"
  "$PY" -m planner validate --profile "$OUT/$grid/profile.yaml" $flag --out "$OUT/$grid" > "$OUT/$grid/validate.txt" 2>&1 || true
  "$PY" - "$OUT/$grid/validation.json" "$grid" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
s, drift = d["summary"], d.get("drift") or {}
c = drift.get("controlled") or {}
pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"
print(f"{sys.argv[2]:5s} runs {s['step_time_s']['runs']:2d}  step-time median {pct(s['step_time_s']['median_abs_error'])}"
      f"  p90 {pct(s['step_time_s']['p90_abs_error'])}  coverage {pct(s['step_time_s']['coverage'])}"
      f"  exposed-lookup median {pct(s['exposed_lookup_s']['median_abs_error'])}"
      f"  bytes median {pct(s['bytes_to_device']['median_abs_error'])}"
      f"  drift {drift.get('ratio') or float('nan'):.2f}x  drift-controlled median {pct(c.get('median_abs_error'))}"
      f"  p90 {pct(c.get('p90_abs_error'))}")
EOF
done
