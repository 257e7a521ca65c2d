"""Small scenarios shared by the simulator, analytic and cost-model tests."""

from __future__ import annotations

from planner.loading import load_hardware, load_model
from planner.specs import EngramPlacement, InferenceWorkload, Scenario, TrainingWorkload


def hardware(devices: int = 1, per_link: int = 1, memory: float = 1e12, **link):
    """An H100 SXM node. ``memory``: device memory, 1 TB by default so that the 200 GB table of
    dense-8b-engram-100b fits on the device tier, the reference offloading is compared with
    (the simulator refuses a placement whose device memory leaves no KV cache)."""
    hw = load_hardware("h100-sxm")
    return hw.model_copy(update={
        "device": hw.device.model_copy(update={"count": devices, "memory": memory}),
        "link": hw.link.model_copy(update={"devices_per_link": per_link, **link}),
    })


def roomy(hw, memory: float = 1e12):
    """``hw`` with ``memory`` bytes on each device (see :func:`hardware`)."""
    return hw.model_copy(update={"device": hw.device.model_copy(update={"memory": memory})})


def scenario(model: str = "dense-8b-engram-100b", devices: int = 1, per_link: int = 1, seqs: int = 8,
             prompt: int = 64, output: int = 16, placement: dict | None = None, hw=None,
             arrival_rate: float | None = None, **workload) -> Scenario:
    return Scenario(
        name="test",
        model=load_model(model),
        hardware=hw or hardware(devices, per_link),
        workload=InferenceWorkload(num_sequences=seqs, prompt_len=prompt, output_len=output,
                                   arrival_rate=arrival_rate, **workload),
        placement=EngramPlacement(**(placement or {"tier": "host"})),
    )


def training(model: str = "tiny", placement: dict | None = None, **workload) -> Scenario:
    return Scenario(
        name="train", model=load_model(model), hardware=hardware(2, 2),
        workload=TrainingWorkload(**{"batch_size": 2, "seq_len": 64, "steps": 3, **workload}),
        placement=EngramPlacement(**(placement or {"tier": "host"})),
    )
