"""Where a calibrated profile came from, compared with where it is used (torch-free).

HARDWARE.md: engine and kernel versions move predictions by large factors, so a prediction made
with a profile from other software or hardware says so. :func:`fingerprint_mismatches` compares
what can be detected here without torch (CPU model, torch version from package metadata, GPU
model from the NVIDIA driver) with the profile's fingerprint.
"""

from __future__ import annotations

import glob
import warnings
from importlib import metadata

from planner.specs import HardwareSpec


class CalibrationMismatchWarning(UserWarning):
    """A calibrated profile is used with software or hardware it was not measured on."""


def current_environment() -> dict[str, str | None]:
    """What can be detected here without importing torch: CPU model, torch version (from the
    installed package's metadata), GPU model (from the NVIDIA driver's /proc entries)."""
    from planner.bench import _cpu_model

    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    gpu = None
    for info in sorted(glob.glob("/proc/driver/nvidia/gpus/*/information")):
        try:
            with open(info) as f:
                for line in f:
                    if line.startswith("Model:"):
                        gpu = line.split(":", 1)[1].strip()
                        break
        except OSError:
            continue
        if gpu:
            break
    return {"cpu": _cpu_model(), "torch": torch_version, "gpu": gpu}


def _major_minor(version: str | None) -> str | None:
    if not version:
        return None
    parts = version.split("+")[0].split(".")
    return ".".join(parts[:2])


def fingerprint_mismatches(hw: HardwareSpec, env: dict | None = None) -> list[str]:
    """Differences between a calibrated profile's fingerprint and this environment, compared
    only where both sides are known: torch major.minor, CPU model, and (CUDA profiles, when a
    GPU is visible) GPU model. Empty for uncalibrated profiles."""
    if hw.calibration is None:
        return []
    fp, env = hw.calibration.fingerprint, env if env is not None else current_environment()
    out = []
    have, want = _major_minor(env.get("torch")), _major_minor(fp.torch)
    if have and want and have != want:
        out.append(f"torch {want} when calibrated, {have} here")
    if env.get("cpu") and fp.cpu and env["cpu"] != fp.cpu:
        out.append(f"CPU {fp.cpu!r} when calibrated, {env['cpu']!r} here")
    if hw.calibration.device == "cuda" and env.get("gpu") and fp.gpu and env["gpu"] not in fp.gpu and fp.gpu not in env["gpu"]:
        out.append(f"GPU {fp.gpu!r} when calibrated, {env['gpu']!r} here")
    return out


def warn_if_mismatched(hw: HardwareSpec, env: dict | None = None) -> list[str]:
    """Warn (``CalibrationMismatchWarning``) when :func:`fingerprint_mismatches` finds any;
    never raises. Returns the mismatches."""
    try:
        found = fingerprint_mismatches(hw, env)
    except Exception as exc:  # detection must never stop a prediction
        found = []
        warnings.warn(f"could not check the calibration fingerprint of {hw.name!r}: {exc}",
                      CalibrationMismatchWarning, stacklevel=3)
    if found:
        warnings.warn(
            f"hardware profile {hw.name!r} was calibrated on different software/hardware "
            f"({'; '.join(found)}; calibrated {hw.calibration.fingerprint.date}): its fitted curves "
            "may not hold here. Re-run `engram-planner calibrate` on the machine you predict for.",
            CalibrationMismatchWarning, stacklevel=3,
        )
    return found


def same_machine(hw: HardwareSpec) -> bool | None:
    """Whether ``hw`` was calibrated on this machine in this boot (its fingerprint's
    ``machine``); None for uncalibrated profiles or fingerprints without one."""
    if hw.calibration is None or not hw.calibration.fingerprint.machine:
        return None
    from planner.calibration.tasks import machine_identity

    here = machine_identity()
    return None if here is None else here == hw.calibration.fingerprint.machine
