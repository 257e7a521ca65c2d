"""Every bundled preset and model loads; presets cite sources and stay physically sane."""

import pytest

from planner.loading import bundled_models, bundled_profiles, load_hardware, load_model

PRESETS = ["h100-sxm", "h100-pcie", "h800", "h200", "a100-80gb", "l40s", "rtx-4090", "gh200", "cpu-workstation",
           "dgx-spark", "m3-ultra"]


def test_required_presets_exist():
    assert set(PRESETS) <= set(bundled_profiles())


@pytest.mark.parametrize("name", sorted(bundled_profiles()))
def test_preset_loads_and_is_sane(name):
    hw = load_hardware(name)
    assert hw.sources and all(s.strip() for s in hw.sources)
    d = hw.device
    # Dense peaks, not the 2:4-sparse ones (HARDWARE.md): the fastest dense bf16 of any preset is
    # Blackwell's 2.5 PFLOP/s (GB200/GB300); a sparse figure (4.5-5 PFLOP/s) would exceed this.
    assert d.flops_for("bf16") < 3.0e15
    if hw.source == "calibrated":
        # Measured on the machine itself (a small CI VM is far below any datasheet).
        assert hw.calibration is not None and d.flops_for("fp32") > 1e9
        return
    assert d.flops_for("bf16") >= 1e12
    assert hw.link.h2d_bandwidth * hw.efficiency.link <= hw.host.memory_bandwidth
    if d.kind == "cuda" and not hw.unified:
        # A host link never outruns device memory.
        assert hw.link.h2d_bandwidth < d.memory_bandwidth
    if hw.unified:  # one pool: no link, the "link" figures are the pool's own bandwidth
        assert hw.link.h2d_bandwidth == d.memory_bandwidth == hw.host.memory_bandwidth
        assert d.memory <= hw.host.memory
    assert hw.host.memory >= 16 * 2**30


def test_h100_numbers_from_hardware_md():
    hw = load_hardware("h100-sxm")
    assert hw.device.flops["bf16"] == 989e12
    assert hw.device.memory_bandwidth == 3.35e12
    assert load_hardware("h200").device.memory == 141e9
    assert load_hardware("a100-80gb").device.flops["bf16"] == 312e12
    assert load_hardware("gh200").link.kind == "nvlink_c2c"


@pytest.mark.parametrize("name", sorted(bundled_models()))
def test_bundled_model_loads(name):
    assert load_model(name).n_layers > 0


def test_load_by_path(tmp_path):
    from planner.loading import PROFILES_DIR

    assert load_hardware(PROFILES_DIR / "h800.yaml").name.startswith("H800")
