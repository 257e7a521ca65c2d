"""Spec validation: bad input is refused with a message naming the field."""


import pytest
import yaml

from planner.loading import MODELS_DIR, PROFILES_DIR, SpecError, scenario_from_dict, validate
from planner.specs import EngramPlacement, EngramSpec, HardwareSpec, ModelSpec


def _model_dict(name="engram-27b"):
    return yaml.safe_load((MODELS_DIR / f"{name}.yaml").read_text())


def _hw_dict(name="h100-sxm"):
    return yaml.safe_load((PROFILES_DIR / f"{name}.yaml").read_text())


def _refused(cls, data, *fragments):
    with pytest.raises(SpecError) as info:
        validate(cls, data, "test.yaml")
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_typo_names_the_key():
    data = _model_dict()
    data["engram"]["n_head"] = data["engram"].pop("n_heads")
    _refused(ModelSpec, data, "engram.n_head", "Extra inputs are not permitted")


def test_negative_bandwidth_names_the_field():
    data = _hw_dict()
    data["link"]["h2d_bandwidth"] = "-63 GB/s"
    _refused(HardwareSpec, data, "link.h2d_bandwidth", "cannot be negative", "-63 GB/s")


def test_zero_bandwidth_refused():
    data = _hw_dict()
    data["host"]["memory_bandwidth"] = 0
    _refused(HardwareSpec, data, "host.memory_bandwidth", "greater than 0")


def test_engram_layer_past_last_layer():
    data = _model_dict()
    data["engram"]["layer_ids"] = [1, 30]
    _refused(ModelSpec, data, "engram.layer_ids[1] = 30 is past the last layer", "n_layers = 30")


def test_non_integer_head_split():
    data = _model_dict()
    data["engram"]["embed_dim_per_ngram"] = 644
    _refused(ModelSpec, data, "engram", "embed_dim_per_ngram = 644", "n_heads = 8", "80.5")


def test_wrong_unit_and_discriminator():
    data = _hw_dict()
    data["device"]["memory"] = "80 GB/s"
    _refused(HardwareSpec, data, "device.memory", "unknown unit")
    data = _model_dict()
    data["attention"]["kind"] = "mqa"
    _refused(ModelSpec, data, "attention", "mqa")


def test_gqa_groups_and_moe_top_k():
    data = _model_dict("dense-8b")
    data["attention"]["n_kv_heads"] = 5
    _refused(ModelSpec, data, "attention", "not a multiple of n_kv_heads = 5")
    data = _model_dict()
    data["ffn"]["moe"]["top_k"] = 99
    _refused(ModelSpec, data, "ffn.moe", "top_k = 99")


def test_table_sizes_per_order():
    e = EngramSpec(layer_ids=[1], table_size_per_head=1000, embed_dim_per_ngram=64)
    assert e.table_size_per_head == [1000, 1000]
    with pytest.raises(ValueError, match="needs one per order"):
        EngramSpec(layer_ids=[1], table_size_per_head=[1000], embed_dim_per_ngram=64, max_ngram=4)
    with pytest.raises(ValueError, match="twice"):
        EngramSpec(layer_ids=[1, 1], table_size_per_head=1000, embed_dim_per_ngram=64)
    assert e.d_head == 8 and e.d_mem == 128 and e.rows_per_token == 16


def test_specs_are_frozen(engram27b):
    with pytest.raises(Exception):
        engram27b.d_model = 1


def test_spec_round_trips_through_yaml_dict(engram27b, h100):
    assert ModelSpec.model_validate(engram27b.to_yaml_dict()) == engram27b
    assert HardwareSpec.model_validate(h100.to_yaml_dict()) == h100


def test_cpu_device_needs_memcpy_link():
    data = _hw_dict("cpu-workstation")
    data["link"]["kind"] = "pcie4"
    _refused(HardwareSpec, data, "device.kind is 'cpu'", "memcpy")


def _scenario(**overrides):
    data = {
        "model": "engram-27b",
        "hardware": "h100-sxm",
        "workload": {"kind": "inference", "num_sequences": 8, "prompt_len": 512, "output_len": 128},
        "placement": {"tier": "host", "cache_fraction": 0.05},
    }
    data.update(overrides)
    return data


def test_scenario_resolves_bundled_references():
    s = scenario_from_dict(_scenario())
    assert s.model.name == "Engram-27B" and s.hardware.device.count == 8
    assert s.placement.tier_of(14) == "host"


def test_scenario_errors_name_the_path():
    with pytest.raises(SpecError, match="workload.prompt_len"):
        scenario_from_dict(_scenario(workload={"kind": "inference", "num_sequences": 8,
                                               "prompt_len": -3, "output_len": 128}))
    with pytest.raises(SpecError, match="no nvme section"):
        scenario_from_dict(_scenario(hardware="h100-pcie", placement={"tier": "disk"}))
    with pytest.raises(SpecError, match="layer 5, which has no Engram module"):
        scenario_from_dict(_scenario(placement={"layer_tiers": {5: "host"}}))
    with pytest.raises(SpecError, match="max_seq_len = 4096"):
        scenario_from_dict(_scenario(workload={"kind": "inference", "num_sequences": 8,
                                               "prompt_len": 4000, "output_len": 128}))
    with pytest.raises(SpecError, match="neither a file nor a bundled model"):
        scenario_from_dict(_scenario(model="engram-99b"))


def test_referenced_file_errors_name_that_file(tmp_path):
    bad = _model_dict()
    bad["d_model"] = "wide"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(SpecError) as info:
        scenario_from_dict(_scenario(model="bad.yaml"), base_dir=tmp_path)
    assert "bad.yaml" in str(info.value) and "d_model" in str(info.value)


def test_workload_length_distributions():
    s = scenario_from_dict(_scenario(workload={
        "kind": "inference", "num_sequences": 4,
        "prompt_len": {"kind": "lognormal", "median": 300, "sigma": 0.8, "max": 2048},
        "output_len": {"kind": "uniform", "low": 16, "high": 256}}))
    assert s.workload.prompt_len.kind == "lognormal"
    with pytest.raises(SpecError, match="low = 300 is above high = 16"):
        scenario_from_dict(_scenario(workload={"kind": "inference", "num_sequences": 4,
                                               "prompt_len": 10,
                                               "output_len": {"kind": "uniform", "low": 300, "high": 16}}))


def test_placement_per_layer_tiers():
    p = EngramPlacement(tier="host", layer_tiers={14: "device"})
    assert p.tier_of(1) == "host" and p.tier_of(14) == "device"
    assert p.any_offloaded([14]) is False and p.any_offloaded([1, 14]) is True
    with pytest.raises(ValueError):
        EngramPlacement(cache_fraction=1.5)


def test_engram_scale_block_and_no_conv():
    e = EngramSpec(layer_ids=[1], table_size_per_head=1000, embed_dim_per_ngram=2048, dtype="fp8",
                   scale_block=32, kernel_size=0)
    assert e.d_head == 256 and e.scales_per_row == 8 and e.kernel_size == 0
    assert EngramSpec(layer_ids=[1], table_size_per_head=1000, embed_dim_per_ngram=64).scales_per_row == 0
    data = _model_dict()
    data["engram"]["scale_block"] = 32  # rows of 80
    _refused(ModelSpec, data, "engram", "scale_block = 32 does not divide the row width", "= 80")
    data["engram"]["scale_block"] = 0
    _refused(ModelSpec, data, "engram.scale_block", "greater than 0")
    data["engram"]["scale_block"] = None
    data["engram"]["kernel_size"] = -1
    _refused(ModelSpec, data, "engram.kernel_size", "greater than or equal to 0")
