#!/usr/bin/env bash
# GPU evidence in one call of a lent H200 machine (issue 15, docs/validation.md "GPU evidence").
#
#   bash scripts/gpu_evidence.sh          # on the lent machine: everything under $OUT, < 9 minutes
#   bash scripts/gpu_evidence.sh --cpu    # dry run here: the same pipeline on --device cpu, short
#   bash scripts/gpu_evidence.sh --only validate,bench --profile hw_profiles/calibrated-h200.yaml
#                                         # a rerun: some stages, an earlier run's profile
#
# Stages, each under `timeout` and inside one overall budget (GPU_EVIDENCE_BUDGET_S, default
# 525 s, so the whole call ends before 9 minutes):
#   fingerprint   nvidia-smi, torch/CUDA versions, CPU, memory    -> $OUT/fingerprint.txt
#   install       carried wheels (.whl/, scripts/fetch_gpu_wheels.sh) into /tmp/site; the
#                 project itself from the working tree (PYTHONPATH) plus its package metadata
#   tests         python3 -m pytest -m cuda -q   (on --cpu: the same command; they skip)
#   calibrate     --device cuda --quick --base h200               -> $OUT/calibrated-h200.yaml
#   validate      --host-mode staged / uva --quick against it     -> $OUT/validation-{staged,uva}
#   bench         bench offload (full size, 10 steps; --quick if that fails) -> $OUT/bench-offload.json
#   pack          validation folders into one .tar.gz each when $OUT holds more than the 8 files
#                 the device tool returns; checks sizes and depth    -> $OUT/manifest.txt
# Everything printed goes to $OUT/log.txt too. Without $OUT: ./out/gpu-evidence.
# Exit status: 0 when every stage ran (validate exiting 1, median error above its threshold,
# counts as ran: the numbers are the evidence), 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

MODE=cuda
ONLY=tests,calibrate,validate,bench
GIVEN_PROFILE=
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) MODE=cpu ;;
    --only) ONLY=${2:?--only needs a list: tests,calibrate,validate,bench}; shift ;;
    --profile) GIVEN_PROFILE=$(realpath "${2:?--profile needs a file}"); shift
               [ -f "$GIVEN_PROFILE" ] || { echo "no such profile: $GIVEN_PROFILE" >&2; exit 2; } ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (--cpu, --only STAGES, --profile FILE)" >&2; exit 2 ;;
  esac
  shift
done
for s in ${ONLY//,/ }; do
  case "$s" in tests|calibrate|validate|bench) ;; *) echo "unknown stage in --only: $s" >&2; exit 2 ;; esac
done
wanted() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

OUT=${OUT:-$REPO/out/gpu-evidence}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
BUDGET_S=${GPU_EVIDENCE_BUDGET_S:-525}
RESERVE_S=20          # kept for packing, and for timeout's --kill-after grace
SITE=${GPU_EVIDENCE_SITE:-/tmp/site}
CAL_CACHE=${TMPDIR:-/tmp}/gpu-evidence-calibration-cache
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 MPLBACKEND=Agg

BASE=${TMPDIR:-/tmp}/gpu-evidence-base-h200.yaml
if [ "$MODE" = cuda ]; then
  PROFILE=$OUT/calibrated-h200.yaml
  CAL_ARGS=(--device cuda --quick --base "$BASE" --name "NVIDIA H200 (lent machine, 1 GPU), calibrated --quick")
  VAL_ARGS=(--device cuda --quick)
  BENCH_FULL=(--steps 10)
  CAPS=(tests=60 calibrate=240 validate=90 bench=90 bench_quick=45)
else
  PROFILE=$OUT/calibrated-cpu-dryrun.yaml
  CAL_ARGS=(--device cpu --quick --threads 1 --name "CPU dry run of scripts/gpu_evidence.sh")
  # Two runs of the grid, 2 repetitions: the pipeline, not the accuracy.
  VAL_ARGS=(--device cpu --quick --runs host-decode-B8,host-prefetch-B8 --repeats 2)
  BENCH_FULL=()
  CAPS=(tests=120 calibrate=240 validate=90 bench=90 bench_quick=60)
fi
cap() { local kv; for kv in "${CAPS[@]}"; do [ "${kv%%=*}" = "$1" ] && echo "${kv#*=}"; done; }

T0=$(date +%s)
STATUS=()
FAILED=0
now() { date -u +%H:%M:%S; }
elapsed() { echo $(( $(date +%s) - T0 )); }

# stage NAME CAP_S CMD...: run CMD under timeout (CAP_S, cut to what the budget has left);
# returns CMD's status (124 when timed out, 125 when skipped for want of time).
stage() {
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET_S - $(elapsed) - RESERVE_S ))
  (( limit > left )) && limit=$left
  if (( limit < 5 )); then
    echo "=== [$(now) +$(elapsed)s] $name: SKIPPED, ${left}s of the ${BUDGET_S}s budget left"
    STATUS+=("$name: skipped (budget)")
    return 125
  fi
  echo "=== [$(now) +$(elapsed)s] $name: start (timeout ${limit}s): $*"
  local t=$(date +%s)
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  local took=$(( $(date +%s) - t ))
  local what="rc=$rc"
  (( rc == 124 || rc == 137 )) && what="TIMED OUT after ${limit}s"
  echo "=== [$(now) +$(elapsed)s] $name: end, $what, ${took}s"
  STATUS+=("$name: $what, ${took}s")
  return $rc
}

fingerprint() {
  echo "# gpu_evidence.sh --mode $MODE, $(date -u +%FT%TZ)"
  echo "## commit"
  if git -C "$REPO" rev-parse HEAD >/dev/null 2>&1; then
    git -C "$REPO" describe --always --dirty
  elif [ -f "$REPO/.whl/commit.txt" ]; then
    echo "$(cat "$REPO/.whl/commit.txt") (from .whl/commit.txt: the tree was copied without .git)"
  else
    echo "unknown (no .git, no .whl/commit.txt)"
  fi
  echo "## host"
  uname -a
  echo "cpus: $(nproc); $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null)"
  free -m 2>/dev/null | head -2
  cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null | sed 's/^/transparent_hugepage: /'
  echo "## nvidia-smi"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,pci.bus_id,pcie.link.gen.max,pcie.link.width.max,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv
    nvidia-smi topo -m 2>/dev/null
  else
    echo "no nvidia-smi"
  fi
  echo "## python and torch"
  "$PY" - <<'EOF'
import platform, sys
print("python", sys.version.replace("\n", " "), "at", sys.executable, platform.machine())
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
      "threads", torch.get_num_threads())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs",
          f"{p.total_memory / 2**30:.1f} GiB", "count", torch.cuda.device_count())
else:
    print("device: no CUDA")
EOF
  "$PY" -m pip list 2>/dev/null | grep -i -E '^(torch|numpy|scipy|numba|tokenizers|pyyaml|tqdm|pytest|hypothesis|narwhals|typing.extensions|packaging) ' || true
}

install() {
  local wheels=("$REPO"/.whl/*.whl)
  if [ ! -e "${wheels[0]}" ]; then
    echo "no wheels in .whl/: run scripts/fetch_gpu_wheels.sh here first, and carry .whl"
    "$PY" -c "import pydantic, simpy, plotly" 2>/dev/null && { echo "(this Python has them anyway)"; return 0; }
    return 1
  fi
  local pyver
  pyver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  if [ "$pyver" = 3.12 ]; then
    # The device tool's README form: wheels into a target folder, put on PYTHONPATH.
    timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "${wheels[@]}" || return 1
    export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    # Dry run on another Python: the wheels are cp312 ones, so check that the set installs
    # (one version each, no index) into a scratch folder, and keep this Python's own packages.
    echo "python $pyver here, the wheels are for 3.12: checking that they install, not using them"
    rm -rf "$SITE-check"
    timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE-check" \
      --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 "${wheels[@]}" || return 1
    ls "$SITE-check" | grep -i dist-info
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
  fi
  # The project: its source from the working tree (PYTHONPATH), and its metadata so that
  # importlib.metadata.version("engram-planner") names the version in fingerprints. Nothing is
  # built (no setuptools needed, nothing fetched).
  local meta="$SITE-project"
  rm -rf "$meta" && mkdir -p "$meta"
  "$PY" - "$REPO/pyproject.toml" "$meta" <<'EOF' || return 1
import pathlib, sys, tomllib
project = tomllib.loads(pathlib.Path(sys.argv[1]).read_text())["project"]
d = pathlib.Path(sys.argv[2]) / f"engram_planner-{project['version']}.dist-info"
d.mkdir()
(d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
(d / "INSTALLER").write_text("scripts/gpu_evidence.sh\n")
EOF
  export PYTHONPATH="$PYTHONPATH:$meta"
  echo "PYTHONPATH=$PYTHONPATH"
  "$PY" - <<'EOF'
import importlib.metadata as m
for name in ("engram-planner", "pydantic", "pydantic-core", "annotated-types", "typing-inspection",
             "typing-extensions", "simpy", "plotly", "narwhals", "numpy", "scipy", "pyyaml", "tqdm",
             "torch", "tokenizers", "numba", "pytest", "hypothesis"):
    try:
        print(f"  {name} {m.version(name)}")
    except m.PackageNotFoundError:
        print(f"  {name} MISSING")
import planner, pydantic, simpy, plotly, reference_model.model  # noqa: F401  (imports work)
print("imports ok:", planner.__file__)
EOF
}

# The --base preset for a CUDA calibration: hw_profiles/h200.yaml describes an 8-GPU HGX node,
# and calibrate keeps device.count, link.devices_per_link and the host's sockets and NUMA nodes
# from its base; with count 8, validate would simulate the measured batch spread over 8
# data-parallel GPUs (an eighth of the bytes per step) while one GPU ran it. So: the preset with
# the lent machine's GPU count, one GPU per link, and its own sockets, NUMA nodes and cores.
make_base() {
  "$PY" - "$REPO/hw_profiles/h200.yaml" "$1" <<'PYEOF'
import glob, os, sys

import yaml

src, dst = sys.argv[1:3]
data = yaml.safe_load(open(src))
try:
    import torch
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 1
except ImportError:
    gpus = 1
numa = len(glob.glob("/sys/devices/system/node/node[0-9]*")) or 1
with open("/proc/cpuinfo") as f:
    sockets = len({line.split(":", 1)[1].strip() for line in f if line.startswith("physical id")}) or 1
data["name"] = f"H200, {gpus} GPU as lent (the h200 preset cut to this machine)"
data["device"]["count"] = gpus
data["link"]["devices_per_link"] = 1
data["host"].update(sockets=sockets, numa_nodes=numa, cores=os.cpu_count() or data["host"]["cores"])
data["sources"] = list(data.get("sources", [])) + [
    f"scripts/gpu_evidence.sh: device.count {gpus}, link.devices_per_link 1, host sockets {sockets}, "
    f"numa_nodes {numa}, cores {os.cpu_count()} as on the lent machine (the h200 preset is an 8-GPU node)"]
with open(dst, "w") as f:
    yaml.safe_dump(data, f, sort_keys=False)
from planner.loading import load_hardware

hw = load_hardware(dst)
print(f"base {dst}: device.count {hw.device.count}, devices_per_link {hw.link.devices_per_link}, "
      f"sockets {hw.host.sockets}, numa_nodes {hw.host.numa_nodes}, cores {hw.host.cores}")
PYEOF
}

pack() {
  # The device tool returns at most 8 files, 16 MiB each, no more than 2 folders down, with
  # names of letters, digits, '.', '_' and '-'.
  local d
  for d in "$OUT"/validation-*/; do [ -d "$d" ] && rm -rf "$d/.work"; done
  local count
  count=$(find "$OUT" -type f | wc -l)
  if (( count > 8 )); then
    echo "$count files under $OUT (the device tool returns 8): packing the validation folders"
    for d in "$OUT"/validation-*/; do
      [ -d "$d" ] || continue
      d=$(basename "$d")
      tar -czf "$OUT/$d.tar.gz" -C "$OUT" "$d" && rm -rf "${OUT:?}/$d"
    done
  fi
  {
    echo "# $OUT after gpu_evidence.sh --mode $MODE ($(elapsed)s)"
    printf '%s\n' "${STATUS[@]}"
    echo "## files"
    (cd "$OUT" && find . -type f ! -name manifest.txt | sort | while read -r f; do
       printf '%10d  %s\n' "$(stat -c %s "$f")" "${f#./}"
       case "$f" in *.tar.gz) tar -tzvf "$f" | awk '{printf "            %10d  %s\n", $3, $6}' ;; esac
     done)
  } > "$OUT/manifest.txt"
  local problems
  problems=$(cd "$OUT" && find . -type f -size +16M; find . -mindepth 4 -type f; \
             find . -name '*[!A-Za-z0-9._/-]*')
  [ -n "$problems" ] && echo "WARNING: these will not come back from the device: $problems"
  count=$(find "$OUT" -type f | wc -l)
  (( count > 8 )) && echo "WARNING: $count files under $OUT, the device tool returns 8"
  cat "$OUT/manifest.txt"
}

main() {
  echo "=== gpu_evidence.sh: mode $MODE, stages $ONLY${GIVEN_PROFILE:+, profile $GIVEN_PROFILE}, out $OUT, budget ${BUDGET_S}s, python $(command -v "$PY"), start $(date -u +%FT%TZ)"
  local keep=${TMPDIR:-/tmp}/gpu-evidence-given-profile.yaml
  [ -n "$GIVEN_PROFILE" ] && cp "$GIVEN_PROFILE" "$keep"   # it may lie in $OUT, cleaned next
  rm -rf "$OUT"/validation-* "$OUT"/*.yaml "$OUT"/*.json "$OUT"/fingerprint.txt "$OUT"/manifest.txt

  export -f fingerprint
  export PY REPO MODE
  stage fingerprint 30 bash -c 'fingerprint > "$1" 2>&1' _ "$OUT/fingerprint.txt"
  cat "$OUT/fingerprint.txt"
  if [ "$MODE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    echo "torch sees no CUDA device: use --cpu for the dry run"
    exit 1
  fi

  # Not a subshell: install exports PYTHONPATH for the stages after it.
  echo "=== [$(now) +$(elapsed)s] install: start"
  local t=$(date +%s)
  if install; then STATUS+=("install: rc=0, $(( $(date +%s) - t ))s")
  else STATUS+=("install: FAILED"); echo "=== install failed: nothing else can run"; pack; exit 1; fi
  echo "=== [$(now) +$(elapsed)s] install: end"

  if wanted tests; then
    stage tests "$(cap tests)" "$PY" -m pytest -m cuda -q -p no:cacheprovider tests/ || FAILED=1
  fi

  # The 1-GPU base (made and checked on --cpu too, where calibrate keeps its CPU preset).
  if wanted calibrate && [ -z "$GIVEN_PROFILE" ]; then
    export -f make_base
    rm -f "$BASE"
    stage base 30 bash -c 'make_base "$1"' _ "$BASE" || FAILED=1
    if [ "$MODE" = cuda ] && [ ! -s "$BASE" ]; then
      echo "no 1-GPU base: calibrating on the 8-GPU h200 preset (fix device.count in the profile by hand)"
      CAL_ARGS=("${CAL_ARGS[@]/#$BASE/h200}")
    fi
  fi

  local profile=$PROFILE
  if [ -n "$GIVEN_PROFILE" ]; then
    cp "$keep" "$PROFILE"   # comes back beside the validations that used it
    echo "profile given: $GIVEN_PROFILE, copied to $PROFILE (not calibrating)"
  elif wanted calibrate; then
    # A fresh cache folder: everything is measured, and the raw measurements stay readable
    # there (outside $OUT) after the run.
    rm -rf "$CAL_CACHE"
    stage calibrate "$(cap calibrate)" "$PY" -m planner calibrate "${CAL_ARGS[@]}" --cache-dir "$CAL_CACHE" \
      --out "$PROFILE" || FAILED=1
  fi
  if [ ! -s "$profile" ]; then
    if [ "$MODE" = cuda ] && [ -s "$BASE" ]; then profile=$BASE   # the 1-GPU preset, not the 8-GPU one
    else profile=$REPO/hw_profiles/$([ "$MODE" = cuda ] && echo h200 || echo cpu-workstation).yaml; fi
    wanted validate && echo "no calibrated profile: validating against the datasheet preset $profile (a foreign profile)"
  fi

  local mode rc
  for mode in staged uva; do
    wanted validate || break
    stage "validate-$mode" "$(cap validate)" "$PY" -m planner validate "${VAL_ARGS[@]}" --host-mode "$mode" \
      --profile "$profile" --out "$OUT/validation-$mode"
    rc=$?
    (( rc == 0 || rc == 1 )) || FAILED=1   # 1: ran, median error above the threshold
  done

  if ! wanted bench; then
    :
  elif [ ${#BENCH_FULL[@]} -gt 0 ]; then
    stage bench "$(cap bench)" "$PY" -m planner bench offload "${BENCH_FULL[@]}" --out "$OUT/bench-offload.json" \
      || { rm -f "$OUT/bench-offload.json"
           stage bench-quick "$(cap bench_quick)" "$PY" -m planner bench offload --quick \
             --out "$OUT/bench-offload.json" || FAILED=1; }
  else
    stage bench-quick "$(cap bench_quick)" "$PY" -m planner bench offload --quick --steps 3 \
      --out "$OUT/bench-offload.json" || FAILED=1
  fi

  if [ "$MODE" = cuda ] && command -v nvidia-smi >/dev/null; then
    { echo "## nvidia-smi after the runs ($(date -u +%FT%TZ))"
      nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu,power.draw,memory.used,clocks_throttle_reasons.active --format=csv
    } >> "$OUT/fingerprint.txt" 2>&1
  fi
  echo "=== [$(now) +$(elapsed)s] pack"
  pack
  echo "=== gpu_evidence.sh: done in $(elapsed)s, $([ $FAILED = 0 ] && echo 'every stage ran' || echo 'SOME STAGES FAILED')"
  return $FAILED
}

main 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
