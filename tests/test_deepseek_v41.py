"""The bundled DeepSeek-V4.1-Flash: its Engram tables row for row and byte for byte against the
release (sources in the YAML header and /work/notes/v41flash_research.md), fp8 rows with UE8M0
block scales through every consumer of row bytes, and the Engram module without convolution."""

import copy
import json

import pytest
import torch
import yaml

from planner.accounting import (
    engram_bytes_per_token,
    engram_dense_params,
    engram_row_bytes,
    engram_table_bytes,
    engram_table_rows,
    param_counts,
    tier_footprint,
)
from planner.cli import main
from planner.costmodel import BatchShape, CostModel
from planner.loading import MODELS_DIR, SpecError, load_hardware, load_model, validate
from planner.memory import activation_workspace_bytes
from planner.primes import engram_table_primes
from planner.specs import EngramPlacement, ModelSpec

NAME = "deepseek-v4.1-flash"
# engram_num_embeddings of the released config (ROCm/ATOM fixture; transformers
# configuration_deepseek_v41.py docstring "released: `[384006168, 384016682]`").
ROWS = {1: 384_006_168, 14: 384_016_682}
# (ROWS sum) x 264 B; vLLM PR #57195: "The two full host tables occupy about 188.83 GiB once".
TABLE_BYTES = 202_758_032_400


@pytest.fixture(scope="module")
def v41():
    return load_model(NAME)


def _data() -> dict:
    return yaml.safe_load((MODELS_DIR / f"{NAME}.yaml").read_text())


def test_release_geometry(v41):
    e = v41.engram
    assert (v41.n_layers, v41.d_model, v41.vocab_size, v41.hc_mult) == (40, 5120, 129280, 4)
    assert (v41.ffn.moe.n_routed_experts, v41.ffn.moe.top_k, v41.ffn.moe.expert_width) == (384, 6, 2304)
    assert not any(not v41.is_moe_layer(i) for i in range(40))  # no dense prefix
    assert e.orders == [2, 3, 4] and e.rows_per_token == 24 and e.d_head == 256
    assert (e.dtype, e.scale_block, e.scales_per_row, e.kernel_size, e.pad_id) == ("fp8", 32, 8, 0, 2)


def test_prime_rule_gives_the_released_row_counts(v41):
    """The first prime >= 16,000,000, distinct over every (layer, order, head): vLLM's
    EngramLayout, whose totals the release declares as engram_num_embeddings."""
    assert engram_table_rows(v41) == ROWS
    e = v41.engram
    primes = engram_table_primes(e.layer_ids, e.table_size_per_head, e.n_heads)
    assert primes[1][0][:3] == [16000057, 16000079, 16000081]
    assert primes[14][2][-3:] == [16000877, 16000879, 16000889]
    flat = [p for orders in primes.values() for heads in orders for p in heads]
    assert len(flat) == len(set(flat)) == 48


def test_row_and_table_bytes(v41):
    assert engram_row_bytes(v41) == 264  # 256 E4M3 bytes + 8 UE8M0 scales
    tables = engram_table_bytes(v41)
    assert tables == {1: 101_377_628_352, 14: 101_380_404_048}
    assert sum(tables.values()) == TABLE_BYTES
    assert sum(tables.values()) / 2**30 == pytest.approx(188.83, abs=0.005)
    assert engram_bytes_per_token(v41) == 24 * 264
    counts = param_counts(v41)
    assert counts.engram_tables == 196_613_849_600  # scales are bytes, not parameters
    assert counts.dense_ffn == 0
    assert tier_footprint(v41, EngramPlacement(tier="host")).host == TABLE_BYTES


def test_engram_dense_is_the_paper_form_without_conv(v41):
    """Value + 4 keys (6144 -> 5120) with biases, 2 gate norms per branch, no conv: 25,600 more
    per layer than the checkpoint's wkv [25600, 6144] + q/k weights [4, 5120] (no biases)."""
    assert engram_dense_params(v41) == 157_352_960
    assert engram_dense_params(v41) - (25600 * 6144 + 2 * 4 * 5120) == 25_600
    with_conv = v41.model_copy(update={"engram": v41.engram.model_copy(update={"kernel_size": 4})})
    assert engram_dense_params(with_conv) - engram_dense_params(v41) == 4 * 5120 * 4 + 4 * 5120


def test_cost_model_and_memory_see_264_byte_rows(v41):
    cost = CostModel(v41, load_hardware("h200"))
    assert cost.row_bytes == 264
    b = BatchShape.decode(8, 1024)
    unscaled = v41.model_copy(update={"engram": v41.engram.model_copy(update={"scale_block": None})})
    plain = CostModel(unscaled, load_hardware("h200"))
    w, w0 = cost.engram(b), plain.engram(b)
    assert w.bytes - w0.bytes == pytest.approx(8 * 24 * 8)  # the scale bytes of the rows read
    assert w.flops - w0.flops == pytest.approx(8 * 24 * 256)  # de-quantisation: a multiply per value
    assert cost.device_gather(b).bytes == pytest.approx(2 * 8 * 24 * 264)
    # kernel_size 0: no conv FLOPs (2 per tap + 4 per branch channel)
    conv = v41.model_copy(update={"engram": v41.engram.model_copy(update={"kernel_size": 4})})
    assert CostModel(conv, load_hardware("h200")).engram(b).flops - w.flops == pytest.approx(8 * 4 * 5120 * 12)
    width = 1  # fp8 model
    gap = activation_workspace_bytes(v41, 100, 1) - activation_workspace_bytes(unscaled, 100, 1)
    assert gap == pytest.approx(100 * 24 * 8 * width)


def test_params_cli_prints_the_table_bytes(capsys):
    assert main(["params", NAME]) == 0
    out = capsys.readouterr().out
    assert "all Engram tables: 202,758,032,400 B" in out and "188.83 GiB" in out
    assert "rows of 256 = 264 B" in out and "384,006,168" in out and "384,016,682" in out
    assert "196,613,849,600" in out
    assert main(["params", NAME, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["engram"]["row_bytes"] == 264 and summary["engram"]["scale_block"] == 32
    assert sum(layer["bytes"] for layer in summary["engram"]["layers"]) == TABLE_BYTES
    assert main(["params", NAME, "--tier", "host", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["footprint"]["host"] == TABLE_BYTES


def test_scale_block_and_kernel_size_validation():
    data = _data()
    bad = copy.deepcopy(data)
    bad["engram"]["scale_block"] = 48
    with pytest.raises(SpecError) as info:
        validate(ModelSpec, bad, "test.yaml")
    assert "scale_block = 48 does not divide the row width" in str(info.value) and "256" in str(info.value)
    for value in (0, -1):
        bad["engram"]["scale_block"] = value
        with pytest.raises(SpecError, match="engram.scale_block"):
            validate(ModelSpec, bad, "test.yaml")
    bad = copy.deepcopy(data)
    bad["engram"]["kernel_size"] = -1
    with pytest.raises(SpecError, match="engram.kernel_size"):
        validate(ModelSpec, bad, "test.yaml")


# ----------------------------------------------------------------------------- reference model


def _small(**engram) -> ModelSpec:
    """V4.1's features (hc 4, all-MoE, GQA with one KV head, orders 2..4, no conv) at CPU size."""
    data = _data()
    data.update(vocab_size=300, n_layers=3, d_model=32, max_seq_len=64, dtype="fp32")
    data["attention"] = {"kind": "gqa", "n_heads": 4, "n_kv_heads": 1, "head_dim": 8}
    data["ffn"] = {"dense_width": 16, "moe": {"n_routed_experts": 6, "n_shared_experts": 1, "top_k": 2,
                                              "expert_width": 16, "n_leading_dense_layers": 0}}
    data["engram"].update({"layer_ids": [1, 2], "table_size_per_head": [101, 103, 107], "embed_dim_per_ngram": 16,
                           "dtype": "fp32", "scale_block": None, **engram})
    return validate(ModelSpec, data, "small.yaml")


def test_reference_model_without_conv():
    from reference_model.model import EngramModel

    torch.manual_seed(0)
    spec = _small()
    model = EngramModel(spec).eval()
    assert model.blocks[1].engram.conv is None
    assert sum(p.numel() for p in model.parameters()) == param_counts(spec).total
    with torch.no_grad():
        for p in model.parameters():  # give the zero-initialised parts values
            if p.dim() and (p == 0).all():
                p.copy_(torch.randn(p.shape) * 0.3)
        ids = torch.randint(0, 300, (2, 12))
        full = model(ids)
        cache = model.new_cache(2, 12)
        parts = [model(ids[:, :5], kv_cache=cache)] + [model(ids[:, t:t + 1], kv_cache=cache) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=0)


def test_reference_model_refuses_fp8_and_scaled_rows():
    from reference_model.model import EngramModel

    with pytest.raises(ValueError, match=r"model\.engram\.dtype = 'fp8'"):
        EngramModel(_small(dtype="fp8"))
    with pytest.raises(ValueError, match=r"model\.engram\.scale_block = 2"):
        EngramModel(_small(scale_block=2))


def test_a_plan_sweep_drops_block_scales_where_they_do_not_apply():
    """Candidates of another dtype or of a width the scales do not tile have plain rows."""
    from planner.plan import expand_plan, plan_from_dict
    from planner.plan.candidates import model_choices

    plan = plan_from_dict({"studies": [{
        "name": "v41", "scenario": "h800-dense8b-engram100b", "set": {"model": NAME},
        "search": {"engram_params": ["196B"], "dtype": ["fp8", "bf16"], "row_width": [256, 200]}}]})
    choices = model_choices(expand_plan(plan)[0])
    by = {(c.axes.dtype, c.axes.row_width): c.model for c in choices}
    assert by[("fp8", 256)].engram.scale_block == 32 and engram_row_bytes(by[("fp8", 256)]) == 264
    assert by[("bf16", 256)].engram.scale_block is None and engram_row_bytes(by[("bf16", 256)]) == 512
    assert by[("fp8", 200)].engram.scale_block is None


def test_fp4_routed_experts_give_the_checkpoints_weight_bytes():
    """fp8 weights with fp4 routed experts (0.5 B + one scale byte per 32) come to the
    checkpoint's size less its Engram tables: 510.3 GB - 202.8 GB = 307.5 GB (TinyTitan's HF
    metadata, the notes' sources), within 1% (the fp8 block scales are left out)."""
    from planner.accounting import param_counts, weight_bytes

    v41 = load_model(NAME)
    counts = param_counts(v41)
    expected = (counts.backbone - counts.routed_experts) * 1 + counts.routed_experts * (0.5 + 1 / 32)
    assert weight_bytes(v41) == pytest.approx(expected)
    assert weight_bytes(v41) == pytest.approx(510.3e9 - TABLE_BYTES, rel=0.01)
    with pytest.raises(ValueError, match="routed_expert_dtype"):
        from reference_model.moe import MoE

        MoE(64, v41.ffn.moe)
