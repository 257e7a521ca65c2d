"""The bad-input corpus of tests/test_bad_input.py: each case is files to write into an empty
folder, a command line run there, and the fragments its refusal must contain (the field, flag or
file, and the value). Kinds follow issue 18: output paths and errors from other libraries that
used to end in tracebacks; work that used to hang or exhaust memory; nonsense that used to be
accepted; refusals that used to be vague; messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import re

import yaml

from planner.loading import MODELS_DIR, PROFILES_DIR


@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    argv: list[str]
    expect: list[str]
    files: dict[str, str | bytes] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    mkdirs: tuple[str, ...] = ()
    needs: str = ""  # "ray": skipped where Ray is not installed; "no-cuda": where a GPU is


def _dump(data) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def _set(data: dict, dotted: str, value) -> dict:
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return data


def scenario(**changes) -> str:
    """A tiny scenario (bundled tiny model on the CPU workstation preset), with dotted changes."""
    data = {"name": "s", "model": "tiny", "hardware": "cpu-workstation",
            "workload": {"kind": "inference", "num_sequences": 8, "prompt_len": 16, "output_len": 8,
                         "max_num_seqs": 8},
            "placement": {"tier": "host"}}
    for key, value in changes.items():
        _set(data, key.replace("__", "."), value)
    return _dump(data)


def model(name: str = "tiny", **changes) -> str:
    data = yaml.safe_load((MODELS_DIR / f"{name}.yaml").read_text())
    for key, value in changes.items():
        _set(data, key.replace("__", "."), value)
    return _dump(data)


def hardware(name: str = "cpu-workstation", **changes) -> str:
    data = yaml.safe_load((PROFILES_DIR / f"{name}.yaml").read_text())
    for key, value in changes.items():
        _set(data, key.replace("__", "."), value)
    return _dump(data)


def plan(study: dict | None = None, **top) -> str:
    entry = {"name": "a", "scenario": "s.yaml", "search": {"tier": ["device", "host"], "cache_fraction": [0.0, 0.1]}}
    entry.update(study or {})
    return _dump({"name": "p", **top, "studies": [entry]})


SCEN = {"s.yaml": scenario()}
PLAN = {"s.yaml": scenario(), "p.yaml": plan()}
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))
CALIBRATED = (PROFILES_DIR / "calibrated-ci-cpu.yaml").read_text()
# The committed profile's first y_max and its fp32 peak, as written (it is re-measured now and then).
_Y_MAX = re.search(r"y_max: ([0-9.e+-]+)", CALIBRATED).group(1)
_PEAK = re.search(r"peak_flops_fp32: ([0-9.e+-]+)", CALIBRATED).group(1)
TWENTY_LAYERS = yaml.safe_load(model(n_layers=24, engram__layer_ids=list(range(20))))

CASES = [
    # ---------------------------------------------------------------- used to end in a traceback
    Case("plan-out-under-dev-null", "traceback", ["plan", "p.yaml", "--out", "/dev/null/sub"],
         ["--out", "/dev/null", "not a directory"], PLAN),
    Case("plan-out-is-a-file", "traceback", ["plan", "p.yaml", "--out", "f"], ["--out 'f'", "is a file"],
         {**PLAN, "f": "x"}),
    Case("plan-out-empty", "nonsense", ["plan", "p.yaml", "--out", ""], ["--out", "empty"], PLAN),
    Case("plan-out-name-too-long", "traceback", ["plan", "p.yaml", "--out", "o" * 300],
         ["--out", "300 bytes long"], PLAN),
    Case("simulate-trace-under-a-file", "traceback", ["simulate", "s.yaml", "--trace", "f/t.json"],
         ["--trace 'f/t.json'", "f is not a directory"], {**SCEN, "f": "x"}),
    Case("simulate-trace-is-a-directory", "traceback", ["simulate", "s.yaml", "--trace", "d"],
         ["--trace 'd'", "is a directory"], SCEN, mkdirs=("d",)),
    Case("schema-out-under-a-file", "traceback", ["schema", "--out", "f/sub"], ["--out 'f/sub'", "not a directory"],
         {"f": "x"}),
    Case("schema-out-is-a-file", "traceback", ["schema", "--out", "f"], ["--out 'f'", "is a file"], {"f": "x"}),
    Case("ngram-stats-out-under-a-file", "traceback", ["ngram-stats", "--out", "f/sub", "--max-tokens", "1000"],
         ["--out 'f/sub'", "not a directory"], {"f": "x"}),
    Case("calibrate-out-under-a-file", "traceback", ["calibrate", "--quick", "--out", "f/p.yaml"],
         ["--out 'f/p.yaml'", "f is not a directory"], {"f": "x"}),
    Case("calibrate-out-is-a-directory", "traceback", ["calibrate", "--quick", "--out", "."],
         ["--out '.'", "is a directory"]),
    Case("bench-out-is-a-directory", "traceback", ["bench", "simulator", "--quick", "--out", "."],
         ["--out '.'", "is a directory"]),
    Case("bench-offload-trace-under-a-file", "traceback",
         ["bench", "offload", "--quick", "--trace", "f/t.json"], ["--trace 'f/t.json'"], {"f": "x"}),
    Case("validate-out-is-a-file", "traceback", ["validate", "--profile", "calibrated-ci-cpu", "--quick", "--out", "f"],
         ["--out 'f'", "is a file"], {"f": "x"}),
    Case("cluster-auto-without-a-cluster", "traceback", ["plan", "p.yaml", "--out", "o", "--cluster", "auto"],
         ["--cluster 'auto'", "ray start --head"], PLAN, env={"RAY_ADDRESS": ""}, needs="ray"),
    Case("cluster-address-refused", "traceback", ["plan", "p.yaml", "--out", "o", "--cluster", "ray://127.0.0.1:1"],
         ["--cluster 'ray://127.0.0.1:1'", "cannot reach 127.0.0.1:1"], PLAN, needs="ray"),
    Case("cluster-address-malformed", "vague", ["plan", "p.yaml", "--out", "o", "--cluster", "head-node"],
         ["--cluster 'head-node'", "ray://HOST:PORT"], PLAN),
    Case("calibrate-threads-negative", "traceback", ["calibrate", "--quick", "--threads", "-1", "--out", "p.yaml"],
         ["argument --threads", "-1"]),
    Case("calibrate-threads-zero", "traceback", ["calibrate", "--quick", "--threads", "0", "--out", "p.yaml"],
         ["argument --threads", "0"]),
    Case("model-name-300-characters", "traceback", ["params", "m" * 300], ["300 characters", "neither a file"]),
    Case("scenario-name-300-characters", "traceback", ["simulate", "s" * 300], ["300 characters", "scenario"]),
    Case("plan-workers-zero", "nonsense", ["plan", "p.yaml", "--out", "o", "--workers", "0"],
         ["argument --workers", "0"], PLAN),
    Case("plan-workers-with-cluster", "nonsense", ["plan", "p.yaml", "--out", "o", "--workers", "2", "--cluster", "auto"],
         ["--workers 2 means nothing with --cluster"], PLAN),
    Case("calibrate-disk-dir-missing", "traceback", ["calibrate", "--quick", "--disk-dir", "nope", "--out", "p.yaml"],
         ["--disk-dir nope", "no such directory"]),
    Case("calibrate-disk-dir-with-no-disk", "nonsense",
         ["calibrate", "--quick", "--no-disk", "--disk-dir", ".", "--out", "p.yaml"],
         ["--disk-dir means nothing with --no-disk"]),
    Case("calibrate-cache-dir-with-no-cache", "nonsense",
         ["calibrate", "--quick", "--no-cache", "--cache-dir", "c", "--out", "p.yaml"],
         ["--cache-dir means nothing with --no-cache"]),
    Case("params-cache-fraction-on-device", "nonsense", ["params", "tiny", "--cache-fraction", "0.1"],
         ["--cache-fraction 0.1 means nothing with --tier device"]),
    Case("app-port-zero", "nonsense", ["app", "--port", "0"], ["argument --port", "0"]),
    Case("validate-cuda-profile-on-cpu", "vague", ["validate", "--profile", "h100-sxm", "--quick", "--out", "o"],
         ["--profile h100-sxm", "cuda device", "on cpu"], needs="no-cuda"),
    # ---------------------------------------------------------------- used to hang or run out of memory
    Case("yaml-alias-bomb-model", "runaway", ["params", "b.yaml"],
         ["b.yaml", "aliases", "ENGRAM_PLANNER_MAX_YAML_NODES"], {"b.yaml": BOMB}),
    Case("yaml-alias-bomb-plan", "runaway", ["plan", "b.yaml", "--out", "o"], ["b.yaml", "200,000 YAML values"],
         {"b.yaml": BOMB}),
    Case("yaml-nesting-100000-deep", "runaway", ["params", "b.yaml"], ["b.yaml", "levels of nesting"],
         {"b.yaml": "a: " + "[" * 100_000 + "]" * 100_000 + "\n"}),
    Case("yaml-recursive-alias", "runaway", ["params", "b.yaml"], ["b.yaml", "recursive"],
         {"b.yaml": "a: &a [1, *a]\n"}),
    Case("yaml-file-above-size-limit", "runaway", ["params", "b.yaml"],
         ["b.yaml", "bytes", "ENGRAM_PLANNER_MAX_YAML_BYTES"], {"b.yaml": "# " + "x" * 5000 + "\n"},
         env={"ENGRAM_PLANNER_MAX_YAML_BYTES": "1000"}),
    Case("plan-grid-of-a-billion-studies", "runaway", ["plan", "p.yaml", "--out", "o"],
         ["1,000,000,000 studies", "10 x 10 x 10", "ENGRAM_PLANNER_MAX_STUDIES"],
         {**SCEN, "p.yaml": plan({"grid": {f"workload.seed{k}": list(range(10)) for k in range(9)}})}),
    Case("simulate-a-billion-sequences", "runaway", ["simulate", "s.yaml"],
         ["workload.num_sequences", "1,000,000,000", "ENGRAM_PLANNER_MAX_SEQUENCES"],
         {"s.yaml": scenario(workload__num_sequences=10**9)}),
    Case("plan-a-billion-sequences", "runaway", ["plan", "p.yaml", "--out", "o"],
         ["studies[0].scenario", "num_sequences", "1,000,000,000"],
         {**SCEN, "p.yaml": plan({"set": {"workload.num_sequences": 10**9}})}),
    Case("plan-a-billion-candidates", "runaway", ["plan", "p.yaml", "--out", "o"],
         ["studies[0].search", "candidates", "ENGRAM_PLANNER_MAX_CANDIDATES"],
         {**SCEN, "p.yaml": plan({"search": {
             "engram_params": [f"{k}M" for k in range(1, 11)], "cache_fraction": [k / 100 for k in range(10)],
             "host_cache_fraction": [k / 100 for k in range(10)], "max_num_seqs": list(range(1, 11)),
             "max_batched_tokens": list(range(256, 266)), "n_heads": list(range(1, 11)),
             "row_width": list(range(1, 11)), "prefetch": [True, False], "dtype": ["fp32", "bf16", "fp16", "fp8"],
             "tier": ["device", "host", "disk"], "layer_ids": [[0], [1], [2], [3], [1, 2]]}})}),
    Case("plan-per-table-tiers-3-to-the-20", "runaway", ["plan", "p.yaml", "--out", "o"],
         ["per_table_tiers", "3,486,784,401", "3 tiers ^ 20 tables", "ENGRAM_PLANNER_MAX_TIER_ASSIGNMENTS"],
         {"s.yaml": scenario(model=TWENTY_LAYERS),
          "p.yaml": plan({"search": {"tier": ["device", "host", "disk"], "per_table_tiers": True}})}),
    Case("simulate-poisson-steps-above-limit", "runaway", ["simulate", "s.yaml"],
         ["engine steps", "Poisson", "ENGRAM_PLANNER_MAX_SIMULATED_STEPS"],
         {"s.yaml": scenario(workload__num_sequences=900_000, workload__arrival_rate=5.0, workload__output_len=64)}),
    Case("simulate-trace-steps-above-limit", "runaway", ["simulate", "s.yaml", "--trace", "t.json"],
         ["with a trace", "ENGRAM_PLANNER_MAX_TRACED_STEPS"],
         {"s.yaml": scenario(workload__num_sequences=20_000, workload__arrival_rate=5.0)}),
    Case("simulate-a-billion-training-steps", "runaway", ["simulate", "s.yaml"], ["engine steps", "workload.steps"],
         {"s.yaml": scenario(workload={"kind": "training", "batch_size": 1, "seq_len": 16, "steps": 10**9})}),
    Case("model-a-billion-layers", "runaway", ["params", "m.yaml"],
         ["n_layers", "1,000,000,000 transformer blocks", "ENGRAM_PLANNER_MAX_LAYERS"],
         {"m.yaml": model(n_layers=10**9)}),
    Case("model-a-billion-engram-heads", "runaway", ["params", "m.yaml"],
         ["engram", "Engram hash tables", "ENGRAM_PLANNER_MAX_ENGRAM_TABLES"],
         {"m.yaml": model(engram__n_heads=10**9, engram__embed_dim_per_ngram=2 * 10**9)}),
    Case("model-a-billion-ngram-orders", "runaway", ["params", "m.yaml"], ["engram", "999,999,999 orders (max_ngram - 1)", "Engram hash tables"],
         {"m.yaml": model(engram__max_ngram=10**9, engram__table_size_per_head=3001)}),
    Case("simulate-a-million-devices", "runaway", ["simulate", "s.yaml"],
         ["hardware.device.count", "1,000,000 devices"],
         {"s.yaml": scenario(hardware="h.yaml"), "h.yaml": hardware(device__count=10**6)}),
    Case("bench-simulator-a-billion-configs", "runaway", ["bench", "simulator", "--configs", "1000000000"],
         ["argument --configs", "1,000,000", "1000000000"]),
    Case("bench-offload-rows-beyond-ram", "runaway", ["bench", "offload", "--rows-per-head", "10000000000"],
         ["--rows-per-head 10,000,000,000", "RAM"]),
    # ---------------------------------------------------------------- nonsense that used to be accepted
    Case("hc-mult-yes", "nonsense", ["params", "m.yaml"], ["hc_mult", "boolean", "True"],
         {"m.yaml": model().replace("hc_mult: 2", "hc_mult: yes")}),
    Case("layer-id-true", "nonsense", ["params", "m.yaml"], ["engram.layer_ids[1]", "boolean"],
         {"m.yaml": model(engram__layer_ids=[1, True])}),
    Case("num-sequences-on", "nonsense", ["simulate", "s.yaml"], ["workload.num_sequences", "boolean"],
         {"s.yaml": scenario().replace("num_sequences: 8", "num_sequences: on")}),
    Case("rope-theta-infinite", "nonsense", ["params", "m.yaml"], ["rope_theta", "finite", "inf"],
         {"m.yaml": model() + "rope_theta: .inf\n"}),
    Case("norm-eps-nan", "nonsense", ["params", "m.yaml"], ["norm_eps", "finite", "nan"],
         {"m.yaml": model() + "norm_eps: .nan\n"}),
    Case("hashing-rate-infinite", "nonsense", ["simulate", "s.yaml"],
         ["h.yaml", "host.hash_tokens_per_s_per_core", "finite"],
         {"s.yaml": scenario(hardware="h.yaml"), "h.yaml": hardware(host__hash_tokens_per_s_per_core=float("inf"))}),
    Case("arrival-rate-infinite", "nonsense", ["simulate", "s.yaml"], ["workload.arrival_rate", "finite", "inf"],
         {"s.yaml": scenario(workload__arrival_rate=float("inf"))}),
    Case("arrival-rate-nan", "nonsense", ["simulate", "s.yaml"], ["workload.arrival_rate", "finite", "nan"],
         {"s.yaml": scenario(workload__arrival_rate=float("nan"))}),
    Case("max-throughput-drop-nan", "nonsense", ["plan", "p.yaml", "--out", "o"],
         ["constraints.max_throughput_drop", "finite", "nan"],
         {**SCEN, "p.yaml": plan({"constraints": {"max_throughput_drop": float("nan")}})}),
    Case("max-throughput-drop-5", "nonsense", ["plan", "p.yaml", "--out", "o"],
         ["constraints.max_throughput_drop", "less than or equal to 1", "5"],
         {**SCEN, "p.yaml": plan({"constraints": {"max_throughput_drop": 5}})}),
    Case("table-of-1e30-rows", "nonsense", ["params", "m.yaml"], ["table_size_per_head", "1e+30", "64-bit row ids"],
         {"m.yaml": model(engram__table_size_per_head=[10**30, 10**30])}),
    Case("plan-engram-params-1e25", "nonsense", ["plan", "p.yaml", "--out", "o"],
         ["studies[0].search.engram_params[0]", "1e+25", "64-bit row ids"],
         {**SCEN, "p.yaml": plan({"search": {"engram_params": ["1e25"]}})}),
    Case("device-tables-beyond-device-memory", "nonsense", ["simulate", "s.yaml"],
         ["cannot run as placed", "per device", "hardware.device.memory is 80 GB", "--ignore-memory"],
         {"s.yaml": scenario(model="dense-8b-engram-100b", hardware="h100-sxm", placement__tier="device")}),
    Case("host-tables-beyond-host-memory", "nonsense", ["simulate", "s.yaml"],
         ["cannot run as placed", "hardware.host.memory"],
         {"s.yaml": scenario(model="dense-8b-engram-100b", placement__tier="host")}),
    Case("calibrated-curve-nan", "nonsense", ["simulate", "s.yaml"], ["h.yaml", "calibration.curves[0].params.y_max", "finite"],
         {"s.yaml": scenario(hardware="h.yaml"), "h.yaml": CALIBRATED.replace(f"y_max: {_Y_MAX}", "y_max: .nan", 1)}),
    Case("calibrated-curve-negative", "nonsense", ["simulate", "s.yaml"], ["h.yaml", f"params.y_max = -{_Y_MAX}", "> 0"],
         {"s.yaml": scenario(hardware="h.yaml"), "h.yaml": CALIBRATED.replace(f"y_max: {_Y_MAX}", f"y_max: -{_Y_MAX}", 1)}),
    Case("calibrated-constant-negative", "nonsense", ["simulate", "s.yaml"],
         ["h.yaml", f"calibration: constants.peak_flops_fp32 = -{float(_PEAK)}", "negative"],
         {"s.yaml": scenario(hardware="h.yaml"),
          "h.yaml": CALIBRATED.replace(f"peak_flops_fp32: {_PEAK}", f"peak_flops_fp32: -{_PEAK}", 1)}),
    Case("yaml-duplicate-key", "nonsense", ["simulate", "s.yaml"], ["s.yaml", "duplicate key 'tier'", "line"],
         {"s.yaml": scenario().replace("  tier: host\n", "  tier: host\n  tier: disk\n")}),
    Case("params-cache-fraction-nan", "nonsense", ["params", "tiny", "--tier", "host", "--cache-fraction", "nan"],
         ["argument --cache-fraction", "finite", "nan"]),
    Case("validate-threshold-nan", "nonsense", ["validate", "--profile", "calibrated-ci-cpu", "--threshold", "nan"],
         ["argument --threshold", "finite", "nan"]),
    Case("params-kv-tokens-negative", "nonsense", ["params", "tiny", "--kv-tokens", "-3"],
         ["argument --kv-tokens", "-3"]),
    # ---------------------------------------------------------------- refusals that used to be vague
    Case("binary-model-file", "vague", ["params", "b.yaml"], ["b.yaml", "not a UTF-8 text file", "0xff"],
         {"b.yaml": b"\xff\xfe\x00\x01garbage\x80"}),
    Case("binary-plan-file", "vague", ["plan", "b.yaml", "--out", "o"], ["b.yaml", "not a UTF-8 text file"],
         {"b.yaml": b"name: p\n\x80\x81\x82"}),
    Case("number-of-100000-digits", "vague", ["params", "b.yaml"], ["b.yaml", "100,000 characters", "line 2"],
         {"b.yaml": "name: x\nvocab_size: " + "9" * 100_000 + "\n"}),
    Case("quantity-of-100000-digits", "vague", ["simulate", "s.yaml"], ["h.yaml", "device.memory"],
         {"s.yaml": scenario(hardware="h.yaml"), "h.yaml": hardware(device__memory="9" * 100_000 + " GB")}),
    Case("quantity-overflowing-to-infinity", "vague", ["simulate", "s.yaml"],
         ["h.yaml", "device.memory", "not a finite number: expected a size in bytes"],
         {"s.yaml": scenario(hardware="h.yaml"), "h.yaml": hardware(device__memory="1e999 GB")}),
    Case("bench-simulator-configs-negative", "vague", ["bench", "simulator", "--configs", "-5"],
         ["argument --configs", "-5"]),
    Case("model-is-a-directory", "vague", ["params", "d"], ["model 'd'", "is a directory"], mkdirs=("d",)),
    Case("scenario-is-a-directory", "vague", ["simulate", "d.yaml"], ["d.yaml", "is a directory"], mkdirs=("d.yaml",)),
    Case("plan-is-a-directory", "vague", ["plan", "d.yaml", "--out", "o"], ["d.yaml", "is a directory"],
         mkdirs=("d.yaml",)),
    Case("plan-file-missing", "vague", ["plan", "missing.yaml", "--out", "o"], ["missing.yaml", "no such file"]),
    Case("scenario-references-a-directory", "vague", ["simulate", "s.yaml"], ["hardware profile", "is a directory"],
         {"s.yaml": scenario(hardware="hw")}, mkdirs=("hw",)),
    # ---------------------------------------------------------------- messages
    Case("misspelt-top-level-key", "message", ["plan", "p.yaml", "--out", "o"],
         ["studys", "did you mean 'studies'"], {**SCEN, "p.yaml": plan().replace("studies:", "studys:")}),
    Case("misspelt-nested-key", "message", ["params", "m.yaml"], ["engram.n_head", "did you mean 'n_heads'"],
         {"m.yaml": model().replace("  n_heads: 4\n  table_size", "  n_head: 4\n  table_size")}),
    Case("misspelt-key-in-union-member", "message", ["params", "m.yaml"],
         ["attention.kv_lora_rnk", "did you mean 'kv_lora_rank'"],
         {"m.yaml": model().replace("kv_lora_rank", "kv_lora_rnk")}),
    Case("misspelt-tier", "message", ["simulate", "s.yaml"], ["placement.tier", "did you mean 'host'", "hots"],
         {"s.yaml": scenario(placement__tier="hots")}),
    Case("misspelt-bundled-model", "message", ["params", "engram-27"], ["engram-27", "did you mean 'engram-27b'"]),
    Case("misspelt-bundled-scenario", "message", ["simulate", "cpu-tinny"], ["cpu-tinny", "did you mean 'cpu-tiny'"]),
    Case("misspelt-bundled-profile", "message", ["profiles", "h100-sx"], ["h100-sx", "did you mean 'h100-sxm'"]),
    Case("misspelt-set-section", "message", ["plan", "p.yaml", "--out", "o"],
         ["worklod.num_sequences", "did you mean 'workload'"],
         {**SCEN, "p.yaml": plan({"set": {"worklod.num_sequences": 8}})}),
    Case("nan-size-wording", "message", ["simulate", "s.yaml"],
         ["device.memory: not a finite number: expected a size in bytes"],
         {"s.yaml": scenario(hardware="h.yaml"), "h.yaml": hardware(device__memory=float("nan"))}),
    Case("cache-fraction-flag-not-field", "message", ["params", "tiny", "--tier", "host", "--cache-fraction", "1.5"],
         ["argument --cache-fraction", "between 0 and 1", "1.5"]),
]
