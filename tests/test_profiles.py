"""Every bundled preset and model loads; presets cite sources and stay physically sane."""

import pytest

from planner.loading import bundled_models, bundled_profiles, load_hardware, load_model

PRESETS = ["h100-sxm", "h100-pcie", "h800", "h200", "a100-80gb", "l40s", "rtx-4090", "gh200", "cpu-workstation",
           "dgx-spark", "m3-ultra", "b200-hgx", "gb200", "gb300", "rtx-pro-6000", "mi300x", "mi325x"]


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
    if "fp8" in d.flops:  # dense fp8 is twice dense bf16; a sparse fp8 next to a dense bf16 is 4x
        assert d.flops["fp8"] <= 2.05 * d.flops_for("bf16")
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


def test_current_deployment_presets_dense_figures():
    """Vendors quote Blackwell and Instinct tensor rates with sparsity; the presets hold half."""
    dense_bf16 = {"b200-hgx": 2250e12, "gb200": 2500e12, "gb300": 2500e12, "rtx-pro-6000": 500e12,
                  "mi300x": 1307.4e12, "mi325x": 1307.4e12}
    for name, bf16 in dense_bf16.items():
        d = load_hardware(name).device
        assert d.kind == "cuda" and d.flops["bf16"] == bf16 and d.flops["fp8"] == pytest.approx(2 * bf16, rel=1e-3)
    assert load_hardware("b200-hgx").device.memory == 180e9
    assert load_hardware("gb300").device.memory == 288e9
    assert load_hardware("mi325x").device.memory == 256e9
    for name in ("gb200", "gb300"):  # one NVL72 compute tray: 2 Grace + 4 GPUs, C2C to LPDDR5X
        hw = load_hardware(name)
        assert hw.device.count == 4 and hw.host.sockets == 2 and hw.link.kind == "nvlink_c2c"
        assert hw.link.h2d_bandwidth == 225e9  # half of one Grace's 450 GB/s per direction
    for name in ("b200-hgx", "rtx-pro-6000", "mi300x", "mi325x"):
        assert load_hardware(name).link.kind == "pcie5"


@pytest.mark.parametrize("name", sorted(bundled_models()))
def test_bundled_model_loads(name):
    assert load_model(name).n_layers > 0


def test_load_by_path(tmp_path):
    from planner.loading import PROFILES_DIR

    assert load_hardware(PROFILES_DIR / "h800.yaml").name.startswith("H800")
