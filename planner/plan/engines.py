"""The public engine settings that realise a recommended scenario, where an engine exposes them.

Only flags a public engine documents are named, each with its source; what no engine exposes
is said as such (never an invented flag):

* vLLM engine arguments (docs.vllm.ai, "Engine Arguments"): ``--tensor-parallel-size``,
  ``--max-num-seqs``, ``--max-num-batched-tokens``, ``--gpu-memory-utilization``,
  ``--max-model-len``. SGLang server arguments (docs.sglang.io, "Server Arguments"):
  ``--tp-size``, ``--max-running-requests``, ``--chunked-prefill-size``,
  ``--mem-fraction-static``, ``--context-length``.
* DeepSeek-V4.1-Flash's Engram tables (the research notes' section 3, from the engines'
  sources): vLLM keeps them in pinned host memory read over UVA and prefetched on a side stream
  by default, ``--engram-config '{"cpu_offload": false}'`` puts them in HBM (vLLM
  ``docs/features/engram.md``, ``vllm/config/engram.py``); SGLang keeps them in HBM by default
  and ``--engram-config '{"placement": "cpu"}'`` moves them to pinned host memory read in place
  (docs.sglang.io, "Engram Tables"). Neither upstream engine reads them from NVMe (vLLM PR #56757,
  closed unmerged), and neither exposes a hot-row cache or a staged (CPU-gathered) host path.
"""

from __future__ import annotations

from planner.specs import InferenceWorkload, Scenario

ENGRAM_ENGINES_MODEL = "DeepSeek-V4.1-Flash"  # the model whose Engram support the flags below are


def engine_settings(scenario: Scenario) -> dict[str, str]:
    """``{"vLLM": "...", "SGLang": "..."}``: the launch flags of each engine for ``scenario``,
    and what it cannot do, in words (an empty dict for a training workload)."""
    w = scenario.workload
    if not isinstance(w, InferenceWorkload):
        return {}
    tp = w.tensor_parallel_size
    vllm = [f"--tensor-parallel-size {tp}", f"--max-num-seqs {w.max_num_seqs}",
            f"--max-num-batched-tokens {w.max_batched_tokens}", f"--gpu-memory-utilization {w.gpu_memory_utilization:g}"]
    sglang = [f"--tp-size {tp}", f"--max-running-requests {w.max_num_seqs}",
              f"--chunked-prefill-size {w.max_batched_tokens}", f"--mem-fraction-static {w.gpu_memory_utilization:g}"]
    if w.max_model_len is not None:
        vllm.append(f"--max-model-len {w.max_model_len}")
        sglang.append(f"--context-length {w.max_model_len}")
    notes: list[str] = []
    model, placement = scenario.model, scenario.placement
    # the planner names its candidates "<model> + Engram ..."
    if model.engram is not None and model.name.startswith(ENGRAM_ENGINES_MODEL):
        tiers = {placement.tier_of(layer) for layer in model.engram_layer_ids}
        if tiers == {"device"}:
            vllm.append("--engram-config '{\"cpu_offload\": false}'")
        elif tiers == {"host"}:
            sglang.append("--engram-config '{\"placement\": \"cpu\"}'")
            if placement.host_mode != "uva":
                notes.append("both engines read host tables over UVA: the staged (CPU-gathered) path is this "
                             "project's reference model only")
        if "disk" in tiers:
            notes.append("no upstream engine reads the tables from NVMe (vLLM PR #56757 closed; forks only)")
        if len(tiers) > 1:
            notes.append("neither engine places the two tables in different tiers")
        if placement.cache_fraction > 0:
            notes.append("neither engine keeps a hot-row cache of host tables in HBM")
    elif model.engram is not None:
        notes.append(f"no public engine serves Engram tables for this model ({model.name}): the placement has no flag")
    tail = f" (not exposed: {'; '.join(notes)})" if notes else ""
    return {"vLLM": "vllm serve ... " + " ".join(vllm) + tail, "SGLang": "python -m sglang.launch_server ... "
            + " ".join(sglang) + tail}
