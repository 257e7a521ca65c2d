"""Device memory of one serving engine: what the weights, hot rows and activations leave for
the paged KV cache, and how many blocks that is.

Engines size their KV cache once, at start-up, the same way (vLLM's ``determine_available_memory``,
nano-vLLM's ``ModelRunner.allocate_kv_cache``): they run one forward pass of
``max_batched_tokens`` tokens, note the peak memory, and give the KV cache what remains of
``gpu_memory_utilization x device memory``::

    kv = utilization x memory - weights - device-resident Engram bytes - workspace - runtime
    blocks = floor(kv / (block_size x KV bytes per token))

* weights: every backbone parameter in the model dtype (:func:`planner.accounting.weight_bytes`);
  one device holds a whole replica (the simulator's devices are data-parallel replicas);
* Engram bytes on the device: device-tier tables and the hot-row caches of offloaded ones
  (:func:`planner.accounting.tier_footprint`);
* workspace: the peak activation memory of that profiling pass (:func:`activation_workspace_bytes`);
* runtime: the CUDA context, cuBLAS workspaces and the allocator's slack, which the engine's
  ``torch.cuda.mem_get_info`` counts as used: an assumption (``RUNTIME_RESERVED_BYTES``), 0 on
  a CPU device.

A sequence holds ``ceil(tokens / block_size)`` blocks for the tokens whose KV is cached (and
the one being computed); the scheduler admits and preempts by free blocks
(:mod:`planner.sim.kvcache`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from planner.accounting import engram_row_bytes, kv_cache_bytes_per_token, tier_footprint, weight_bytes
from planner.parallel import engine_view, host_table_copies, kv_replication
from planner.specs import DTYPE_BYTES, GQAAttention, InferenceWorkload, ModelSpec, Scenario

# CUDA context plus cuBLAS/NCCL workspaces and allocator slack on an H100-class device: an
# assumption (a CUDA 12 context alone takes about 0.3-0.5 GiB; engines leave the rest to
# gpu_memory_utilization's margin). Set to 0 for a CPU "device".
RUNTIME_RESERVED_BYTES = 0.5 * 2**30
FP32 = 4


def activation_workspace_bytes(model: ModelSpec, tokens: int, logit_rows: int) -> float:
    """Peak activation bytes of one forward pass over ``tokens`` tokens that computes logits for
    ``logit_rows`` sequences: the live tensors of the widest block (residual branches, the
    normed input, q/k/v, the attention output, the FFN's gate, up and product), the Engram
    rows a token gathers, and the fp32 logits. Blocks run one after another, so one block's
    tensors are live at a time; caching allocators keep the peak reserved."""
    width = DTYPE_BYTES[model.dtype]
    d, att = model.d_model, model.attention
    if isinstance(att, GQAAttention):
        qkv = (att.n_heads + 2 * att.n_kv_heads) * model.head_dim
    else:  # MLA prefill: the expanded per-head keys and values plus the latent
        qkv = att.n_heads * (2 * (att.qk_nope_head_dim + att.qk_rope_head_dim) + att.v_head_dim) + att.kv_lora_rank
    ffn = 3 * model.ffn.dense_width
    moe = model.ffn.moe
    if moe is not None:  # routed copies of each token (top_k) plus the shared experts
        ffn = max(ffn, 3 * moe.expert_width * (moe.top_k + moe.n_shared_experts) + d * moe.top_k)
    per_token = (model.hc_mult + 2) * d + qkv + max(ffn, d)
    if model.engram is not None:
        e = model.engram
        per_token += e.rows_per_token * engram_row_bytes(model) / width + 2 * model.hc_mult * d
    return tokens * per_token * width + logit_rows * model.vocab_size * FP32


@dataclass(frozen=True)
class DeviceMemory:
    """One device's memory budget (bytes) and its KV cache in blocks."""

    capacity: float
    utilization: float
    weights: float
    engram: float
    workspace: float
    runtime: float
    kv_bytes_per_token: float
    block_tokens: int
    blocks: int
    limited: bool = True  # False: blocks for every request whatever the memory (a what-if)
    # One memory pool (link.kind: unified): the part of the device's allowance that host-tier
    # tables already hold.
    shared: float = 0.0

    @property
    def usable(self) -> float:
        return self.capacity * self.utilization

    @property
    def kv_bytes(self) -> float:
        """What is left for the KV cache (negative when the rest does not fit)."""
        return self.usable - self.weights - self.engram - self.workspace - self.runtime - self.shared

    @property
    def block_bytes(self) -> float:
        return self.block_tokens * self.kv_bytes_per_token

    @property
    def kv_tokens(self) -> int:
        return self.blocks * self.block_tokens

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_tokens)

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(usable=self.usable, kv_bytes=self.kv_bytes, block_bytes=self.block_bytes,
                   kv_tokens=self.kv_tokens)
        return out

    def describe(self) -> str:
        gb = 1e9
        if not self.limited:
            return f"KV cache not limited by memory ({self.blocks:,} blocks of {self.block_tokens} tokens: every request fits)"
        return (f"{self.utilization:g} x {self.capacity / gb:.1f} GB = {self.usable / gb:.1f} GB usable: weights "
                f"{self.weights / gb:.2f} GB, Engram on device {self.engram / gb:.2f} GB, activation workspace "
                f"{self.workspace / gb:.2f} GB, runtime {self.runtime / gb:.2f} GB"
                + (f", host-tier tables in the shared pool {self.shared / gb:.2f} GB" if self.shared else "")
                + f", KV cache {self.kv_bytes / gb:.2f} GB "
                f"= {self.blocks:,} blocks of {self.block_tokens} tokens ({self.kv_tokens:,} tokens)")


def max_model_len(scenario: Scenario) -> int:
    w = scenario.workload
    assert isinstance(w, InferenceWorkload)
    return w.model_len(scenario.model.max_seq_len)


def device_memory(scenario: Scenario, model: ModelSpec | None = None) -> DeviceMemory:
    """The KV cache of one device of ``scenario`` serving ``model`` (default the scenario's;
    the no-Engram baseline passes its own, which leaves more room for KV)."""
    scenario = engine_view(scenario)  # a tensor-parallel group's memory is its ranks' (planner.parallel)
    model = model or scenario.model
    w, hw = scenario.workload, scenario.hardware
    assert isinstance(w, InferenceWorkload)
    footprint = tier_footprint(model, scenario.placement)
    weights = weight_bytes(model)
    engram = footprint.device - weights
    # The profiling pass: max_batched_tokens tokens in sequences of max_model_len (vLLM and
    # nano-vLLM both warm up this way), logits for those sequences only.
    longest = max_model_len(scenario)
    logit_rows = max(1, min(w.max_batched_tokens // longest, w.max_num_seqs))
    workspace = activation_workspace_bytes(model, w.max_batched_tokens, logit_rows)
    runtime = RUNTIME_RESERVED_BYTES if hw.device.kind == "cuda" else 0.0
    per_token = kv_cache_bytes_per_token(model) * kv_replication(model, hw.device.ranks)
    block = w.block_size
    shared = 0.0
    if hw.unified:  # one pool: the host-tier tables (and every other device) take from it too
        pool_share = ((hw.host.memory - footprint.host * host_table_copies(scenario)) * w.gpu_memory_utilization
                      / hw.device.count)
        shared = max(0.0, hw.device.memory * w.gpu_memory_utilization - pool_share)
    free = hw.device.memory * w.gpu_memory_utilization - weights - engram - workspace - runtime - shared
    blocks = max(0, math.floor(free / (block * per_token))) if per_token > 0 else 0
    return DeviceMemory(capacity=hw.device.memory, utilization=w.gpu_memory_utilization, weights=weights,
                        engram=engram, workspace=workspace, runtime=runtime, kv_bytes_per_token=per_token,
                        block_tokens=block, blocks=blocks, shared=shared)


def check_memory(scenario: Scenario, model: ModelSpec | None = None) -> DeviceMemory:
    """The device memory plan, or a ``ValueError`` saying why the engine could not start: the
    rest leaves no KV blocks, or the longest sequence the workload allows needs more blocks
    than the cache holds (vLLM refuses to start in both cases)."""
    mem = device_memory(scenario, model)
    w = scenario.workload
    if mem.blocks == 0:
        raise ValueError(f"no room for a KV cache on {scenario.hardware.device.name}: {mem.describe()}; "
                         "raise workload.gpu_memory_utilization, offload Engram tables, lower "
                         "workload.max_batched_tokens or use a device with more memory")
    from planner.specs import length_bounds

    longest = length_bounds(w.prompt_len)[1] + length_bounds(w.output_len)[1]
    if mem.blocks_for(longest) > mem.blocks:
        raise ValueError(f"a sequence of {longest:,} tokens (prompt_len + output_len maxima) needs "
                         f"{mem.blocks_for(longest):,} KV blocks but the cache holds {mem.blocks:,}: {mem.describe()}")
    return mem
