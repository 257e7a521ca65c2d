"""``engram-planner bench offload``: real offloaded Engram lookups on this machine.

A small backbone (4 blocks, d_model 256, Engram at block 2, so blocks 0-1 are the prefetch
window) carries one Engram layer with the paper's row shape (orders 2-3 x 8 heads, 80-wide
bf16 rows, 160 B) and a table of about 2 GB (``--quick``: 51 MB). Measured, per workload
(``prefill``: 4 x 128 tokens per step; ``decode``: 16 sequences x 1 token, KV-cached):

* step time with the table in device memory (the baseline: an in-layer gather), offloaded to
  the host tier with prefetch off and on, and on the disk tier off and on, read two ways:
  ``disk`` maps the file (``mmap``; just written, so its pages are in the page cache) and
  ``disk_pread`` reads the rows' pages with ``pread`` (``O_DIRECT`` where the filesystem allows
  it: every step reads the drive; with prefetch on that is the pre-staged read);
* exposed lookup time (``wait_L`` spans) and the fraction of lookup work prefetch hides;
* gather throughput of the store (``index_select`` into the staging buffer, after
  de-duplication) against a plain ``torch.index_select`` of the same rows (target >= 90%),
  and of the disk tier cold (page cache dropped with POSIX_FADV_DONTNEED, or bypassed by
  O_DIRECT) and warm, both ways; the output says whether O_DIRECT held.

On a machine without CUDA the "device" is host memory, so host-tier offload measures only the
pipeline's own overhead (plan, de-duplication, threads); the disk tier is the real offload.
With CUDA the model and device table live on the GPU, the host table is pinned and the same
code paths (copy stream, events, pinned double buffers) run.
"""

from __future__ import annotations

import gc
import os
import statistics
import tempfile
import time
from pathlib import Path

from planner.bench import machine_fingerprint

DESCRIPTION = "offloaded Engram lookups: step time device vs host/disk with and without prefetch, gather GB/s"
TARGET_GATHER_RATIO = 0.9
FULL_ROWS_PER_HEAD = 781_250  # 16 heads x 781k rows x 160 B = 2.0 GB
QUICK_ROWS_PER_HEAD = 20_000  # 51 MB


def add_arguments(parser) -> None:
    from planner.cli.common import number

    parser.add_argument("--rows-per-head", type=int, help=f"table rows per head (default {FULL_ROWS_PER_HEAD:,}; "
                        f"--quick {QUICK_ROWS_PER_HEAD:,})")
    parser.add_argument("--steps", type=number(int, 1, 10_000), help="timed steps per configuration (default 20; --quick 5)")
    parser.add_argument("--threads", type=number(int, 1, 4096), default=1,
                        help="torch intra-op threads (default 1: leaves a core to the prefetch worker, and "
                        "on a busy machine an OpenMP region waits for its slowest thread)")
    parser.add_argument("--trace", help="write the Chrome trace of the host-prefetch prefill run to this file")


def bench_spec(rows_per_head: int):
    """The benchmark model: small backbone, one Engram layer at block 2 with paper-shaped rows."""
    from planner.specs import ModelSpec

    return ModelSpec.model_validate({
        "name": f"offload-bench ({rows_per_head:,} rows/head)", "vocab_size": 2048, "n_layers": 4,
        "d_model": 256, "max_seq_len": 256, "dtype": "fp32",
        "attention": {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2},
        "ffn": {"dense_width": 512},
        "engram": {"layer_ids": [2], "max_ngram": 3, "n_heads": 8, "table_size_per_head": rows_per_head,
                   "embed_dim_per_ngram": 640, "dtype": "bf16"},
    })


def _median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_gather(table, disk_path, ids_BTK, repeats: int) -> dict:
    """GB/s of plain index_select vs the store's staged gather on the same (distinct) rows."""
    import torch

    from reference_model.store import LayerStore
    from reference_model.store_disk import DiskRows
    from reference_model.store_sources import DenseRows

    store = LayerStore(0, DenseRows(table, "host", pin=False))  # CPU gather path, as on CUDA hosts
    plan = store.plan(ids_BTK)
    ids = plan.fetch_ids_M
    row_bytes = table.shape[1] * table.element_size()
    nbytes = ids.shape[0] * row_bytes
    out = torch.empty(ids.shape[0], table.shape[1], dtype=table.dtype)
    out2 = torch.empty_like(out)
    flat = ids_BTK.reshape(-1)
    requested = flat.shape[0] * row_bytes
    # Interleaved repeats: on a shared machine, load changes from second to second, and each
    # compared pair should see the same conditions. Medians over the repeats.
    fns = {
        "fresh": lambda: torch.index_select(table, 0, ids),
        "into": lambda: torch.index_select(table, 0, ids, out=out2),
        "staged": lambda: store.source.gather(ids, out),
        "plain_all": lambda: torch.index_select(table, 0, flat),
        "lookup": lambda: store.lookup(ids_BTK),
    }
    times = {k: [] for k in fns}
    for _ in range(repeats + 1):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    fresh, into, staged, plain_all, lookup = (statistics.median(times[k][1:]) for k in fns)
    result = {
        "rows": int(ids.shape[0]), "requested_rows": int(ids_BTK.numel()), "row_bytes": row_bytes,
        # The baseline is the faster of index_select allocating its output and writing into a
        # preallocated one, both on the same distinct rows as the store's gather.
        "index_select_GBps": nbytes / min(fresh, into) / 1e9,
        "index_select_fresh_output_GBps": nbytes / fresh / 1e9,
        "store_gather_GBps": nbytes / staged / 1e9,
        # Whole lookup (plan, dedup, gather, expand back) vs index_select of every requested
        # row: bytes of the requested rows over time.
        "index_select_requested_GBps": requested / plain_all / 1e9,
        "store_lookup_requested_GBps": requested / lookup / 1e9,
    }
    result["gather_ratio"] = result["store_gather_GBps"] / result["index_select_GBps"]
    result["gather_ok"] = result["gather_ratio"] >= TARGET_GATHER_RATIO
    if disk_path is not None:
        # Cold: the file's pages dropped (the mmap reader maps it afresh: pages a live mapping
        # holds are not evicted) and rows never read before. Warm: the same rows again (with
        # O_DIRECT, "warm" reads the drive again: there is no cache to warm).
        g = torch.Generator().manual_seed(12345)
        for read in ("mmap", "pread"):
            disk = DiskRows(disk_path, table.shape[0], table.shape[1], table.dtype, read=read, queue_depth=32)
            disk.drop_page_cache()
            cold_ids = torch.unique(torch.randint(0, table.shape[0], (ids.shape[0],), generator=g))
            cold_out = torch.empty(cold_ids.shape[0], table.shape[1], dtype=table.dtype)
            start = time.perf_counter()
            disk.gather(cold_ids, cold_out)
            cold = time.perf_counter() - start
            warm = _median_s(lambda: disk.gather(cold_ids, cold_out), repeats)
            cold_bytes = cold_ids.shape[0] * row_bytes
            result[f"disk_{read}"] = {"label": disk.label, "cold_rows": int(cold_ids.shape[0]),
                                      "cold_GBps": cold_bytes / cold / 1e9, "cold_rows_per_s": cold_ids.shape[0] / cold,
                                      "warm_GBps": cold_bytes / warm / 1e9}
            del disk
    return result


def run_steps(model, provider, workload: dict, steps: int, trace=None) -> dict:
    """Time ``steps`` engine steps (after two warm-up steps) of :class:`reference_model.engine.Engine`,
    the loop validation and calibration time; returns offload metrics."""
    import torch

    from reference_model.engine import Engine
    from reference_model.instrument import SpanRecorder, offload_metrics

    g = torch.Generator().manual_seed(0)
    B, T, decode = workload["batch"], workload["tokens"], workload["decode"]
    vocab = model.spec.vocab_size
    engine = Engine(model, provider, tracer=SpanRecorder(enabled=False))
    cache = None
    if decode:
        cache = model.new_cache(B, 2 + steps + 8)
        engine.step(torch.randint(3, vocab, (B, 2), generator=g), cache)
    for i in range(steps + 2):
        if i == 2:  # warm-up done: fresh recorder and counters
            engine.set_tracer(trace if trace is not None else SpanRecorder())
            provider.store.reset_stats()
        ids = torch.randint(3, vocab, (B, T), generator=g)
        engine.step(ids, cache if decode else model.new_cache(B, T))
    rec = engine.tracer
    engine.set_tracer(None)
    metrics = offload_metrics(rec.spans(), provider.stats())
    steps_s = sorted(s.dur_s for s in rec.spans() if s.name == "step")
    metrics["step_time_median_s"] = statistics.median(steps_s)
    return metrics


def run(args) -> dict:
    # Flags first: refused in a second, before torch and the reference model are imported.
    if args.trace is not None:
        from planner.files import output_file

        output_file(args.trace, "--trace")
    rows_asked = args.rows_per_head or (QUICK_ROWS_PER_HEAD if args.quick else FULL_ROWS_PER_HEAD)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    table_bytes = rows_asked * 16 * 160  # 16 head tables of 160 B rows held in RAM (the disk copy is page cache)
    if ram and table_bytes > 0.8 * ram:
        raise ValueError(f"--rows-per-head {rows_asked:,} needs about {table_bytes / 1e9:.3g} GB of RAM for the "
                         f"tables, more than 80% of this machine's {ram / 1e9:.3g} GB")
    import torch

    from planner.accounting import engram_table_bytes, engram_table_rows
    from planner.specs.placement import EngramPlacement
    from reference_model.instrument import SpanRecorder, frozen_heap
    from reference_model.model import EngramModel
    from reference_model.prefetch import RowProvider
    from reference_model.store import EngramTableStore, LayerStore
    from reference_model.store_disk import DiskRows
    from reference_model.store_sources import DenseRows

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    rows_per_head = args.rows_per_head or (QUICK_ROWS_PER_HEAD if args.quick else FULL_ROWS_PER_HEAD)
    steps = args.steps or (5 if args.quick else 20)
    if rows_per_head < 100 or steps < 1:
        raise ValueError(f"--rows-per-head must be >= 100 and --steps >= 1, got {rows_per_head}, {steps}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = bench_spec(rows_per_head)
    layer = spec.engram.layer_ids[0]
    rows = engram_table_rows(spec)[layer]
    torch.manual_seed(0)
    model = EngramModel(spec, materialize_tables=False, device=device).eval()

    start = time.perf_counter()
    table = torch.empty(rows, spec.engram.d_head, dtype=torch.bfloat16).uniform_(-0.03, 0.03)
    fill_s = time.perf_counter() - start
    tmp = tempfile.TemporaryDirectory(prefix="engram-offload-bench-")
    start = time.perf_counter()
    disk_path = Path(tmp.name) / f"engram_table_L{layer}.bin"
    sources = {"disk": DiskRows.write(disk_path, table, read="mmap")}
    write_s = time.perf_counter() - start
    sources["disk_pread"] = DiskRows(disk_path, rows, spec.engram.d_head, table.dtype, read="pread", queue_depth=32)

    def provider(tier: str, prefetch: bool) -> RowProvider:
        if tier == "device":
            source = DenseRows(table.to(device), "device")
        elif tier == "host":
            source = DenseRows(table, "host", pin=True)
        else:
            source = sources[tier]
        store = EngramTableStore({layer: LayerStore(layer, source, device=device, dedup=True)})
        return RowProvider(store, prefetch=prefetch)

    workloads = {"prefill": {"batch": 4, "tokens": 128, "decode": False},
                 "decode": {"batch": 16, "tokens": 1, "decode": True}}
    configs = [("device", False), ("host", False), ("host", True), ("disk", False), ("disk", True),
               ("disk_pread", False), ("disk_pread", True)]
    results: dict = {}
    trace = None
    with torch.no_grad():
        with frozen_heap():  # the sources below must stay collectable: frozen objects are not
            for wname, workload in workloads.items():
                results[wname] = {}
                for tier, prefetch in configs:
                    rec = SpanRecorder() if (args.trace and wname == "prefill" and tier == "host" and prefetch) else None
                    with provider(tier, prefetch) as p:
                        m = run_steps(model, p, workload, steps, trace=rec)
                    results[wname][f"{tier}{'_prefetch' if prefetch else ''}"] = m
                    if rec is not None:
                        trace = rec
        g = torch.Generator().manual_seed(1)
        big_ids = torch.randint(0, rows, (4, 128, spec.engram.rows_per_token), generator=g)
        # Unmap before the cold-read measurement (the last provider still holds the source).
        p = None
        disk_io = sources["disk_pread"].label
        sources.clear()
        gc.collect()
        gather = measure_gather(table, disk_path, big_ids, repeats=5 if args.quick else 20)
    if trace is not None:
        from planner.trace import write_chrome_trace

        write_chrome_trace(args.trace, trace.spans(), "engram-planner bench offload",
                           {"config": "prefill, host tier, prefetch on", "machine": machine_fingerprint()})
    tmp.cleanup()
    torch.set_num_threads(threads_before)
    summary = {}
    for wname, r in results.items():
        for tier in ("host", "disk", "disk_pread"):
            sync, pre = r[tier], r[f"{tier}_prefetch"]
            summary[f"{wname}_{tier}_hidden_fraction"] = pre["hidden_fraction"]
            summary[f"{wname}_{tier}_exposed_saved_fraction"] = (
                1 - pre["exposed_s"] / sync["exposed_s"] if sync["exposed_s"] > 0 else 0.0)
    return {
        "machine": machine_fingerprint(),
        "device": str(device),
        "quick": bool(args.quick),
        "model": spec.name,
        "table_rows": rows,
        "table_bytes": engram_table_bytes(spec)[layer],
        "row_bytes": spec.engram.d_head * 2,
        "engram_layer": layer,
        "steps": steps,
        "torch_threads": args.threads,
        "setup_s": {"fill": fill_s, "write_disk": write_s},
        "workloads": {k: dict(v) for k, v in workloads.items()},
        "results": results,
        "gather": gather,
        "disk_pread_io": disk_io,
        "summary": summary,
        "target_gather_ratio": TARGET_GATHER_RATIO,
        "placement_defaults": EngramPlacement(tier="host").model_dump(mode="json"),
    }


def format_text(result: dict) -> str:
    from planner.units import format_bytes

    lines = [f"{result['model']} on {result['device']}: table {result['table_rows']:,} rows x "
             f"{result['row_bytes']} B = {format_bytes(result['table_bytes'])}, Engram at block "
             f"{result['engram_layer']}, {result['steps']} timed steps"]
    for wname, r in result["results"].items():
        w = result["workloads"][wname]
        lines.append(f"\n{wname} ({w['batch']} x {w['tokens']} tokens per step):")
        lines.append(f"  {'config':<21}{'step ms':>10}{'exposed ms':>12}{'lookup ms':>11}{'hidden':>8}"
                     f"{'KB moved':>10}{'unique rows':>13}")
        for name, m in r.items():
            lines.append(f"  {name:<21}{m['step_time_median_s'] * 1e3:>10.2f}{m['exposed_s'] * 1e3:>12.3f}"
                         f"{m['lookup_s'] * 1e3:>11.3f}{m['hidden_fraction']:>8.0%}"
                         f"{m.get('bytes_to_device', 0) / 1e3:>10.1f}{m.get('unique_rows', 0):>13.0f}")
    g = result["gather"]
    ok = "ok" if g["gather_ok"] else "BELOW TARGET"
    lines.append(f"\ngather of {g['rows']:,} distinct rows ({g['requested_rows']:,} requested), {g['row_bytes']} B each:")
    lines.append(f"  torch.index_select {g['index_select_GBps']:.2f} GB/s; store gather {g['store_gather_GBps']:.2f} GB/s "
                 f"= {g['gather_ratio']:.0%} (target >= {result['target_gather_ratio']:.0%}: {ok}); "
                 f"(index_select allocating its output: {g['index_select_fresh_output_GBps']:.2f} GB/s)")
    lines.append(f"  whole lookup (plan, dedup, gather, expand) {g['store_lookup_requested_GBps']:.2f} GB/s of requested "
                 f"rows vs index_select of all {g['requested_rows']:,}: {g['index_select_requested_GBps']:.2f} GB/s")
    for read in ("mmap", "pread"):
        d = g.get(f"disk_{read}")
        if d:
            lines.append(f"  {d['label']}: {d['cold_rows']:,} rows never read before, cold {d['cold_GBps']:.3f} GB/s "
                         f"({d['cold_rows_per_s']:,.0f} rows/s), again {d['warm_GBps']:.2f} GB/s")
    return "\n".join(lines)
