"""``engram-planner ngram-stats``: row statistics of real text through a model's hasher."""

from __future__ import annotations

import json
from pathlib import Path

from planner.cli.common import HELP_FORMATTER, add_json_flag, format_table, number, print_json
from planner.files import output_dir, write_atomic
from planner.loading import load_model

EPILOG = """\
examples:
  engram-planner ngram-stats                          the tiny model, printed
  engram-planner ngram-stats --model engram-27b --out out/ngram --json

Runs the bundled corpus (CPython's pydoc topics, about 129k tokens) through the bundled
tokenizer, Engram's vocabulary compression and the model's n-gram hasher, and measures how
rows repeat. --out writes DIR/ngram_stats.json (the format the simulator reads with
--ngram-stats; see docs/offload.md) and DIR/ngram_stats.html (plotly, works offline).
Needs the reference model's dependencies (torch, tokenizers).
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ngram-stats",
        help="measure Engram row reuse on real text (unique rows per batch, Zipf exponent, cache hit rates)",
        description="Measure rows per token, distinct rows per batch, the Zipf exponent of row "
        "frequencies and the hit rate of a static hot-row cache, on the bundled text.",
        epilog=EPILOG,
        formatter_class=HELP_FORMATTER,
    )
    p.add_argument("--model", default="tiny", help="model YAML file or bundled name (default: tiny)")
    p.add_argument("--out", help="directory for ngram_stats.json and ngram_stats.html")
    p.add_argument("--max-tokens", type=number(int, 1), help="use only the first N corpus tokens")
    p.add_argument("--seed", type=number(int, 0, 2**63 - 1), default=0, help="seed of the batch sampling (default 0)")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.out is not None:
        output_dir(args.out, "--out")
    spec = load_model(args.model)
    if spec.engram is None:
        raise ValueError(f"model {spec.name!r} has no Engram layers: there are no rows to measure")
    try:
        from reference_model.ngram_stats import corpus_row_stream, ngram_stats, stats_figure
    except ImportError as exc:
        raise ValueError(f"ngram-stats needs the reference model's dependencies ({exc}); "
                         "install with pip install -e '.[model]'") from None
    stream = corpus_row_stream(spec, max_tokens=args.max_tokens)
    result = ngram_stats(spec, stream=stream, seed=args.seed)
    if args.out:
        out = Path(args.out)
        write_atomic(out / "ngram_stats.json", json.dumps(result, indent=2) + "\n")
        # include_plotlyjs=True embeds plotly.js: the page opens without a network.
        write_atomic(out / "ngram_stats.html", stats_figure(result).to_html(include_plotlyjs=True))
    if args.json:
        print_json(result)
        return 0
    src = result["source"]
    print(f"{src['model']}: {src['tokens_used']:,} tokens of {src['corpus']}")
    print(f"rows per token per layer: {result['rows_per_token']}, table rows per layer: {result['table_rows']:,}")
    print(f"Zipf exponent of row frequencies (per head table): {result['zipf_exponent']:.3f}\n")
    u = result["unique_rows_curve"]
    print(format_table(["batch tokens", "unique rows / rows read"],
                       [(f"{b:,}", f"{f:.3f}") for b, f in zip(u["batch_tokens"], u["unique_fraction"])]))
    c = result["cache_hit_curve"]
    print()
    print(format_table(["cache fraction", "rows cached", "hit rate (held-out text)"],
                       [(f"{f:g}", f"{round(f * result['table_rows']):,}", f"{h:.3f}")
                        for f, h in zip(c["cache_fraction"], c["hit_rate"])]))
    if args.out:
        print(f"\nwrote {Path(args.out) / 'ngram_stats.json'} and {Path(args.out) / 'ngram_stats.html'}")
    return 0
