"""Small scenarios shared by the simulator, analytic and cost-model tests."""

from __future__ import annotations

from planner.loading import load_hardware, load_model
from planner.specs import EngramPlacement, InferenceWorkload, Scenario, TrainingWorkload


def hardware(devices: int = 1, per_link: int = 1, **link):
    hw = load_hardware("h100-sxm")
    return hw.model_copy(update={
        "device": hw.device.model_copy(update={"count": devices}),
        "link": hw.link.model_copy(update={"devices_per_link": per_link, **link}),
    })


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
