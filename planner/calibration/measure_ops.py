"""The reference model's real ops timed at the shapes the simulator asks about (torch).

Each sample runs ``EngramModel.forward`` with a span recorder as its tracer
(:class:`reference_model.instrument.SpanRecorder`: host clock on CPU, CUDA events on a GPU),
so the durations are exactly the ``embed``, ``engram_L{i}``, ``attn_L{i}``, ``ffn_L{i}`` and
``head`` spans a measured run records, and pairs each with the cost model's FLOPs and bytes for
the same spec and :class:`planner.costmodel.BatchShape`. Fitting efficiency against the cost
model's own work counts makes the calibrated cost model reproduce these spans by construction.

Each span's statistic is the lower quartile of its repeats (see
:func:`planner.calibration.measure.lower_quartile`); blocks of the same kind in one model are
further repeats (their median is kept).

Shapes: prefill of one sequence (``T`` tokens, no cache) and decode steps (``B`` sequences, one
token each, ``C`` cached positions). Row ids are hashed before the timed call (hashing is its own
measurement). ``head`` is sampled on decode only: the cost model counts one logit row per
sequence (vLLM), the reference model's prefill computes every position's logits.

Legend: B = sequences, T = new tokens per sequence, C = cached positions, L = layers.
"""

from __future__ import annotations

import re
import statistics
import time
from collections import defaultdict

import torch

from planner.calibration.measure import lower_quartile
from planner.costmodel import BatchShape, CostModel
from planner.specs import ModelSpec

_SPAN_KIND = [(re.compile(r"attn_L\d+$"), "attention"), (re.compile(r"ffn_L\d+$"), "ffn"),
              (re.compile(r"engram_L\d+$"), "engram"), (re.compile(r"embed$"), "embed"),
              (re.compile(r"head$"), "head")]


def scaled_variant(spec: ModelSpec, factor: int, dtype: str | None = None) -> ModelSpec:
    """``spec`` with every width multiplied by ``factor`` (heads, latents, FFN, experts, Engram
    rows), the same layer layout: the same ops at larger sizes."""
    data = spec.model_dump()
    data["name"] = f"{spec.name} x{factor}" + (f" {dtype}" if dtype else "")
    data["d_model"] *= factor
    data["max_seq_len"] = max(data["max_seq_len"], 1024)
    att = data["attention"]
    for key in ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "v_head_dim", "head_dim"):
        if att.get(key):
            att[key] *= factor
    data["ffn"]["dense_width"] *= factor
    if data["ffn"].get("moe"):
        data["ffn"]["moe"]["expert_width"] *= factor
    if data.get("engram"):
        data["engram"]["embed_dim_per_ngram"] *= factor
    if dtype:
        data["dtype"] = dtype
    return ModelSpec.model_validate(data)


def with_dtype(spec: ModelSpec, dtype: str) -> ModelSpec:
    return spec if spec.dtype == dtype else spec.model_copy(update={"dtype": dtype, "name": f"{spec.name} {dtype}"})


def _kind(spec: ModelSpec, span: str) -> tuple[str, int | None] | None:
    for pattern, kind in _SPAN_KIND:
        if pattern.match(span):
            layer = int(span.rsplit("L", 1)[1]) if kind in ("attention", "ffn", "engram") else None
            return kind, layer
    return None


def _work(cost: CostModel, kind: str, layer: int | None, shape: BatchShape):
    if kind == "attention":
        return cost.attention(shape)
    if kind == "ffn":
        return cost.ffn(layer, shape)
    return getattr(cost, kind)(shape)


def measure_model_ops(spec: ModelSpec, shapes: list[tuple[str, int, int]], repeats: int,
                      device: str = "cpu", seed: int = 0) -> list[dict]:
    """Per op kind and shape: the median span duration over ``repeats`` forwards, with the
    cost model's FLOPs and bytes. ``shapes``: ``("prefill", 1, T)`` or ``("decode", B, C)``."""
    from planner.loading import load_hardware
    from reference_model.instrument import SpanRecorder
    from reference_model.model import EngramModel

    torch.manual_seed(seed)
    model = EngramModel(spec, device=device).eval()
    cost = CostModel(spec, load_hardware("cpu-workstation"))  # work counts only: hardware-free
    out = []
    for phase, a, b in shapes:
        batch, tokens, context = (1, b, 0) if phase == "prefill" else (a, 1, b)
        if context + tokens > spec.max_seq_len:
            continue
        shape = BatchShape.prefill(tokens) if phase == "prefill" else BatchShape.decode(batch, context)
        spans: dict[str, list[float]] = defaultdict(list)
        with torch.no_grad():
            cache = None
            ids = torch.randint(0, spec.vocab_size, (batch, tokens), device=device)
            past = None
            if phase == "decode":
                cache = model.new_cache(batch, context + tokens)
                prompt = torch.randint(0, spec.vocab_size, (batch, context), device=device)
                model(prompt, kv_cache=cache)
                past = prompt
            row_ids = model.engram_row_ids(ids, past) if spec.engram else None
            for r in range(repeats + 1):
                if cache is not None:
                    cache.pos = context
                rec = SpanRecorder(cuda=device == "cuda" and torch.cuda.is_available())
                model(ids, row_ids=row_ids, kv_cache=cache, tracer=rec)
                if r == 0:
                    continue  # warm-up
                per_call: dict[str, float] = defaultdict(float)
                for span in rec.spans():
                    per_call[span.name] += span.dur_s
                for name, dur in per_call.items():
                    spans[name].append(dur)
        for name, durs in spans.items():
            found = _kind(spec, name)
            if found is None or (found[0] == "head" and phase != "decode"):
                continue
            work = _work(cost, found[0], found[1], shape)
            out.append({"model": spec.name, "dtype": spec.dtype, "kind": work.kind, "span": name,
                        "phase": phase, "batch": batch, "tokens": tokens, "context": context,
                        "flops": float(work.flops), "bytes": float(work.bytes),
                        "seconds": lower_quartile(durs)})
    return _merge_layers(out)


def _merge_layers(samples: list[dict]) -> list[dict]:
    """One sample per (kind, shape): the median over the blocks of that kind (the blocks of one
    model run the same op at the same shape, so they are repeats)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for s in samples:
        groups[(s["model"], s["kind"], s["phase"], s["batch"], s["tokens"], s["context"])].append(s)
    out = []
    for group in groups.values():
        first = dict(group[0])
        first["seconds"] = statistics.median(s["seconds"] for s in group)
        first["span"] = ",".join(s["span"] for s in group)
        out.append(first)
    return out


def measure_step_overhead(spec: ModelSpec, layers_list: list[int], repeats: int,
                          device: str = "cpu") -> list[dict]:
    """Seconds of one whole decode step (batch 1, hashing included, no tracer) of ``spec`` cut
    to each number of layers: the intercept of the line is the per-step fixed cost (Python,
    embedding, head, hashing call), the slope the per-layer cost at the smallest size, both
    dominated by dispatch and Python on small models."""
    from reference_model.model import EngramModel

    out = []
    for n_layers in layers_list:
        layer_ids = [i for i in spec.engram_layer_ids if i < n_layers] if spec.engram else []
        data = spec.model_dump()
        data["n_layers"] = n_layers
        if spec.engram:
            data["engram"]["layer_ids"] = layer_ids or [0]
        if data["ffn"].get("moe"):
            data["ffn"]["moe"]["n_leading_dense_layers"] = min(data["ffn"]["moe"]["n_leading_dense_layers"], n_layers)
        cut = ModelSpec.model_validate(data)
        torch.manual_seed(0)
        model = EngramModel(cut, device=device).eval()
        with torch.no_grad():
            cache = model.new_cache(1, 17)
            model(torch.randint(0, cut.vocab_size, (1, 16), device=device), kv_cache=cache)
            ids = torch.randint(0, cut.vocab_size, (1, 1), device=device)
            times = []
            for r in range(repeats + 1):
                cache.pos = 16
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                model(ids, kv_cache=cache)
                if device == "cuda":
                    torch.cuda.synchronize()
                if r:
                    times.append(time.perf_counter() - t0)
        out.append({"layers": n_layers, "seconds": lower_quartile(times)})
    return out
