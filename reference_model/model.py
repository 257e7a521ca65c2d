"""The reference Engram + MoE transformer, built from a :class:`planner.specs.ModelSpec`.

    ids ─► embed ─► (copy to M branches) ─► block 0 ... block n-1 ─► sum branches ─► norm ─► head
    block i:  H += Engram(H, rows_i)                        (Engram layers only, ENGRAM.md 1)
              H  = HC_attn(H, x -> Attn(RMSNorm(x)))         (plain residual when M = 1)
              H  = HC_ffn(H, x -> FFN(RMSNorm(x)))           (dense SwiGLU or DeepSeekMoE)

Legend: B = batch, T = new positions, P = past positions, M = hc_mult branches, D = d_model,
V = vocab, K = Engram rows per token per layer, E = row width (d_head).

Contract with the table store and the row providers
---------------------------------------------------
* ``EngramModel(spec, compressor=None, *, materialize_tables=True, device=None)``. Without a
  compressor compression is the identity (compressed vocab = ``spec.vocab_size``). With
  ``materialize_tables=False`` no Engram module holds a table; rows must come from a provider.
* ``engram_row_ids(input_ids_BT, past_ids_BP=None) -> {layer_id: LongTensor[B, T, K]}``: global
  row ids into each layer's fused table (hash index + the head's offset), on the model's
  device. ``past_ids_BP`` are the raw ids just before ``input_ids_BT`` (the last N-1 are read;
  fewer means the sequence starts there and pads fill in).
* ``forward(input_ids_BT, *, row_ids=None, engram_rows=None, kv_cache=None, tracer=None,
  last_logits=False) -> logits [B, T, V]`` (``[B, 1, V]`` with ``last_logits``: the head runs on
  each sequence's last position only, as a serving engine samples). Without ``engram_rows`` the model computes row ids (unless given) and
  gathers from ``block.engram.table`` (an ``nn.Embedding`` of [rows, E]). With
  ``engram_rows = {layer_id: handle}`` the model calls ``handle.wait()`` immediately before
  that block's Engram module runs (not earlier, so a prefetch overlaps the blocks before it);
  it must return [B, T, K, E] on the model's device in the table dtype. With a
  :class:`KVCache` the call continues that cache (incremental decoding); the cache also keeps
  the last N-1 raw ids so row ids can be computed without ``past_ids``.
* ``tracer(name, track) -> context manager``, optional: spans ``hash`` (when the model hashes
  for itself), ``embed``, ``wait_L{i}``, ``engram_L{i}``, ``attn_L{i}``, ``ffn_L{i}`` and
  ``head`` on track ``"compute"`` (names from ``planner.trace.SPAN_NAMES``).
* ``generate(input_ids_BT, max_new_tokens, *, temperature=0.0, row_provider=None,
  tracer=None, seed=None) -> LongTensor[B, T + max_new_tokens]``: prefill once, then one token
  per step with the KV cache; greedy at temperature 0. Each step is one
  :meth:`reference_model.engine.Engine.step` (with a ``row_provider``, the provider hashes and
  fetches the step's rows, on its worker when prefetching).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from planner.specs.model import ModelSpec
from reference_model.attention import LayerKVCache, build_attention
from reference_model.compression import Compressor
from reference_model.engram import EngramModule
from reference_model.hashing import NgramHasher
from reference_model.hyper import HyperConnection, ManifoldHyperConnection
from reference_model.layers import INIT_STD, RMSNorm, SwiGLU, torch_dtype
from reference_model.moe import MoE
from reference_model.prefetch import RowHandle

Tracer = Callable[[str, str], ContextManager]
TRACK = "compute"


def _no_trace(name: str, track: str) -> ContextManager:
    return nullcontext()


class KVCache:
    """Decoding state of one batch: per-block attention caches, Engram conv states, the
    number of positions seen, and the last N-1 raw ids (for hashing the next positions)."""

    def __init__(self, model: "EngramModel", batch: int, max_len: int):
        if max_len > model.spec.max_seq_len:
            raise ValueError(f"cache length {max_len} exceeds max_seq_len = {model.spec.max_seq_len}")
        self.batch, self.max_len, self.pos = batch, max_len, 0
        self.layers = [
            LayerKVCache(block.attn.cache_shapes(batch, max_len), model.dtype, model.device)
            for block in model.blocks
        ]
        self.conv_states: dict[int, torch.Tensor | None] = {i: None for i in model.spec.engram_layer_ids}
        # On the host: only hashing reads them, and hashing runs on the host (a GPU copy would
        # be copied back, behind queued compute, by every step's hash).
        self.recent_ids = torch.zeros(batch, 0, dtype=torch.long)


class OwnTableRows(RowHandle):
    """A block's rows from its own (device-resident) table, gathered inside the Engram module:
    the path without a row provider, where the gather is part of the layer's compute."""

    in_layer = True

    def __init__(self, engram: EngramModule, ids_BTK: torch.Tensor):
        self._engram, self._ids = engram, ids_BTK

    def wait(self) -> torch.Tensor:
        return self._engram.gather(self._ids)


class Block(nn.Module):
    """One decoder block: optional Engram, attention, dense FFN or MoE, each sublayer wrapped in
    a hyper-connection when hc_mult > 1."""

    def __init__(self, spec: ModelSpec, layer_id: int, engram_rows: int | None, materialize: bool):
        super().__init__()
        self.layer_id = layer_id
        d, eps = spec.d_model, spec.norm_eps
        self.engram = EngramModule(spec, layer_id, engram_rows, materialize) if engram_rows else None
        self.attn_norm, self.attn = RMSNorm(d, eps), build_attention(spec)
        self.ffn_norm = RMSNorm(d, eps)
        self.ffn = MoE(d, spec.ffn.moe) if spec.is_moe_layer(layer_id) else SwiGLU(d, spec.ffn.dense_width)
        if spec.hc_mult > 1:
            if spec.hc_kind == "mhc":
                self.hc_attn = ManifoldHyperConnection(d, spec.hc_mult, 2 * layer_id, spec.hc_sinkhorn_iters, eps)
                self.hc_ffn = ManifoldHyperConnection(d, spec.hc_mult, 2 * layer_id + 1, spec.hc_sinkhorn_iters, eps)
            else:
                self.hc_attn = HyperConnection(d, spec.hc_mult, 2 * layer_id, eps)
                self.hc_ffn = HyperConnection(d, spec.hc_mult, 2 * layer_id + 1, eps)
        else:
            self.hc_attn = self.hc_ffn = None

    def sublayer(self, H_BTMD, hc: HyperConnection | ManifoldHyperConnection | None, fn) -> torch.Tensor:
        if hc is None:  # plain pre-norm residual on the single branch
            return H_BTMD + fn(H_BTMD[:, :, 0]).unsqueeze(2)
        x_BTD, residual_BTMD, beta_BTM = hc.width(H_BTMD)
        return hc.depth(fn(x_BTD), residual_BTMD, beta_BTM)

    def forward(self, H_BTMD, rows: "RowHandle | None", start: int, cache: KVCache | None,
                trace: Tracer) -> torch.Tensor:
        """``rows``: this block's Engram rows (None without an Engram module). A provider's rows
        are waited for before the module (span ``wait_L{i}``: the exposed lookup); the block's
        own table is read inside it (:class:`OwnTableRows`)."""
        i = self.layer_id
        if self.engram is not None:
            if getattr(rows, "in_layer", False):  # the contract is only wait(): a plain handle waits
                rows_BTKE = None
            else:
                with trace(f"wait_L{i}", TRACK):
                    rows_BTKE = rows.wait()
            with trace(f"engram_L{i}", TRACK):
                if rows_BTKE is None:
                    rows_BTKE = rows.wait()
                state = cache.conv_states[i] if cache is not None else None
                y_BTMD, state = self.engram(H_BTMD, rows_BTKE, state)
                if cache is not None:
                    cache.conv_states[i] = state
                H_BTMD = H_BTMD + y_BTMD
        layer_cache = cache.layers[i] if cache is not None else None
        with trace(f"attn_L{i}", TRACK):
            H_BTMD = self.sublayer(H_BTMD, self.hc_attn,
                                   lambda x: self.attn(self.attn_norm(x), start, layer_cache))
        with trace(f"ffn_L{i}", TRACK):
            H_BTMD = self.sublayer(H_BTMD, self.hc_ffn, lambda x: self.ffn(self.ffn_norm(x)))
        return H_BTMD


class EngramModel(nn.Module):
    """The whole decoder (see the module docstring for the diagram and the offload contract).

    Weights are in ``spec.dtype`` and Engram tables in ``spec.engram.dtype``; buffers (router
    bias, table offsets, RoPE tables) stay float32/int64 and are not parameters, so the
    parameter count equals ``planner.accounting.param_counts(spec).total``.
    """

    def __init__(self, spec: ModelSpec, compressor: Compressor | None = None, *,
                 materialize_tables: bool = True, device=None):
        super().__init__()
        self.spec = spec
        self.dtype = torch_dtype(spec.dtype, "dtype")
        self.compressor = compressor
        if compressor is not None and compressor.raw_vocab_size != spec.vocab_size:
            raise ValueError(
                f"the compressor's tokenizer has {compressor.raw_vocab_size} ids but "
                f"vocab_size = {spec.vocab_size}"
            )
        self.hasher: NgramHasher | None = None
        table_rows: dict[int, int] = {}
        if spec.engram is not None:
            e = spec.engram
            if e.pad_id >= spec.vocab_size:
                raise ValueError(f"engram.pad_id = {e.pad_id} is not a token id (vocab_size = {spec.vocab_size})")
            vocab = compressor.compressed_vocab_size if compressor else spec.vocab_size
            pad = int(compressor.lookup_table[e.pad_id]) if compressor else e.pad_id
            self.hasher = NgramHasher(e, vocab, pad)
            table_rows = self.hasher.table_rows
        self.materialize_tables = materialize_tables

        self.embed = nn.Embedding(spec.vocab_size, spec.d_model)
        self.blocks = nn.ModuleList(
            Block(spec, i, table_rows.get(i), materialize_tables) for i in range(spec.n_layers)
        )
        self.norm = RMSNorm(spec.d_model, spec.norm_eps)
        self.head = None if spec.tie_embeddings else nn.Linear(spec.d_model, spec.vocab_size, bias=False)
        self._init_weights()
        self.to(device=device)
        for name, param in self.named_parameters():
            is_table = name.endswith("engram.table.weight")
            param.data = param.data.to(torch_dtype(spec.engram.dtype, "engram.dtype") if is_table else self.dtype)

    @torch.no_grad()
    def _init_weights(self) -> None:
        # nanoGPT's scheme: N(0, 0.02), residual output projections scaled by 1/sqrt(2 n_layers)
        # (GPT-2 paper section 2.3); Engram conv stays zero, norms one, HC as in hyper.py.
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                std = INIT_STD / (2 * self.spec.n_layers) ** 0.5 if name.endswith(("wo", "w2")) else INIT_STD
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding) and not name.endswith("engram.table"):
                nn.init.normal_(module.weight, std=INIT_STD)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def engram_blocks(self) -> dict[int, EngramModule]:
        return {b.layer_id: b.engram for b in self.blocks if b.engram is not None}

    # ------------------------------------------------------------------ lookup path

    def compress(self, ids) -> np.ndarray:
        """Raw ids -> compressed ids (identity without a compressor), as int64 numpy. Negative
        ids are padding markers: they pass through and are hashed (ENGRAM.md 2.1), so the rows
        of a left-padded batch can be fetched; the backbone's embedding cannot take them."""
        arr = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
        if arr.size and arr.max() >= self.spec.vocab_size:
            raise ValueError(f"token ids must be below vocab_size = {self.spec.vocab_size} (negative padding "
                             f"markers pass), got up to {arr.max()}")
        return self.compressor(arr) if self.compressor is not None else arr.astype(np.int64)

    def engram_row_ids(self, input_ids_BT, past_ids_BP=None, device=None) -> dict[int, torch.Tensor]:
        """Global row ids ``{layer_id: LongTensor[B, T, K]}`` (see the module docstring), on
        ``device`` (default the model's). A row provider takes them on the host, where the
        store plans its lookups: moving them to a GPU and back would put a synchronising copy
        on the prefetch path."""
        if self.hasher is None:
            return {}
        past = None if past_ids_BP is None else self.compress(past_ids_BP)
        rows = self.hasher.row_ids(self.compress(input_ids_BT), past)
        target = self.device if device is None else torch.device(device)
        return {layer: torch.from_numpy(np.ascontiguousarray(r)).to(target) for layer, r in rows.items()}

    def host_row_ids(self, input_ids_BT, past_ids_BP=None) -> dict[int, torch.Tensor]:
        """:meth:`engram_row_ids` on the host (the row providers' ``hash_fn``)."""
        return self.engram_row_ids(input_ids_BT, past_ids_BP, device="cpu")

    # ------------------------------------------------------------------ forward

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        return KVCache(self, batch, max_len or self.spec.max_seq_len)

    def forward(self, input_ids_BT: torch.Tensor, *, row_ids: Mapping[int, torch.Tensor] | None = None,
                engram_rows: Mapping | None = None, kv_cache: KVCache | None = None,
                tracer: Tracer | None = None, last_logits: bool = False) -> torch.Tensor:
        trace = tracer or _no_trace
        host_ids_BT = input_ids_BT if isinstance(input_ids_BT, torch.Tensor) and input_ids_BT.device.type == "cpu" else None
        input_ids_BT = torch.as_tensor(input_ids_BT, device=self.device)
        if input_ids_BT.ndim != 2:
            raise ValueError(f"input_ids must be [batch, positions], got shape {tuple(input_ids_BT.shape)}")
        B, T = input_ids_BT.shape
        if input_ids_BT.device.type == "cpu" and input_ids_BT.numel() and int(input_ids_BT.min()) < 0:
            raise ValueError("input_ids holds negative ids (padding markers): their Engram rows can be hashed and "
                             "fetched (engram_row_ids) but the token embedding cannot take them; pass a pad token "
                             "id at those positions")
        start = kv_cache.pos if kv_cache is not None else 0
        if start + T > self.spec.max_seq_len:
            raise ValueError(f"positions {start}..{start + T - 1} exceed max_seq_len = {self.spec.max_seq_len}")
        if kv_cache is not None and kv_cache.batch != B:
            raise ValueError(f"the KV cache is for batch {kv_cache.batch}, got batch {B}")
        engram_ids = set(self.spec.engram_layer_ids)
        if engram_rows is not None and set(engram_rows) != engram_ids:
            raise ValueError(f"engram_rows has layers {sorted(engram_rows)}, the model's Engram layers are {sorted(engram_ids)}")
        if engram_rows is None and engram_ids and row_ids is None:
            with trace("hash", TRACK):
                past = kv_cache.recent_ids if kv_cache is not None else None
                row_ids = self.engram_row_ids(input_ids_BT, past)

        # One handle per Engram layer: the provider's (waited for, span wait_L{i}) or, without a
        # provider, the layer's own table gathered inside its module (part of its compute).
        handles: Mapping[int, RowHandle] = (engram_rows if engram_rows is not None else
                                           {i: OwnTableRows(m, row_ids[i]) for i, m in self.engram_blocks().items()})
        with trace("embed", TRACK):
            x_BTD = self.embed(input_ids_BT)
            H_BTMD = x_BTD.unsqueeze(2).expand(B, T, self.spec.hc_mult, self.spec.d_model).contiguous()
        for block in self.blocks:
            H_BTMD = block(H_BTMD, handles.get(block.layer_id), start, kv_cache, trace)
        with trace("head", TRACK):
            if last_logits:  # an engine samples from each sequence's last position only (vLLM)
                H_BTMD = H_BTMD[:, -1:]
            h_BTD = self.norm(H_BTMD.sum(dim=2))  # HC paper: the branches are summed at the end
            logits_BTV = F.linear(h_BTD, self.embed.weight) if self.head is None else self.head(h_BTD)
        if kv_cache is not None:
            keep = max(self.spec.engram.max_ngram - 1, 0) if self.spec.engram else 0
            if keep:  # the engine passes host ids: no device-to-host copy here
                host = host_ids_BT if host_ids_BT is not None else input_ids_BT.cpu()
                kv_cache.recent_ids = torch.cat([kv_cache.recent_ids, host.to(torch.long)], dim=1)[:, -keep:]
            kv_cache.pos += T
        return logits_BTV

    # ------------------------------------------------------------------ decoding

    @torch.no_grad()
    def generate(self, input_ids_BT, max_new_tokens: int, *, temperature: float = 0.0,
                 row_provider=None, tracer: Tracer | None = None, seed: int | None = None) -> torch.Tensor:
        """Prefill, then decode ``max_new_tokens`` one at a time; returns prompt + new ids."""
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        ids_BT = torch.as_tensor(input_ids_BT, device=self.device)
        B, T = ids_BT.shape
        if T == 0:
            raise ValueError("generate needs at least one prompt token")
        from reference_model.engine import Engine

        cache = self.new_cache(B, T + max_new_tokens)
        generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        engine = Engine(self, row_provider, tracer=tracer)
        out, new_ids = ids_BT, ids_BT
        for _ in range(max_new_tokens):
            logits = engine.step(new_ids, cache)[:, -1].float()
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            out = torch.cat([out, nxt], dim=1)
            new_ids = nxt
        return out
