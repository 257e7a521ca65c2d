"""Reading specs from YAML: the boundary where bad input becomes a clear error.

Every failure raises :class:`SpecError`, whose message names the file, the field path
(``model.engram.layer_ids[1]``) and the offending value; the CLI prints it and exits 2.
``model:`` and ``hardware:`` in a scenario may name a bundled file or a path relative to the
scenario file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from planner.specs import HardwareSpec, ModelSpec, Scenario

ROOT = Path(__file__).resolve().parent.parent
PROFILES_DIR = ROOT / "hw_profiles"
MODELS_DIR = ROOT / "examples" / "models"
SCENARIOS_DIR = ROOT / "examples" / "scenarios"

T = TypeVar("T", bound=BaseModel)


class SpecError(ValueError):
    """Input that cannot become a spec. ``str(err)`` is the full, user-facing message."""


def _path_text(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_validation_error(exc: ValidationError, prefix: tuple = ()) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(err["loc"])
        # Discriminated unions add the tag ("gqa", "fixed") to the path: drop it, it is noise.
        loc = tuple(p for p in loc if p not in {"gqa", "mla", "fixed", "uniform", "lognormal",
                                                 "inference", "training"})
        msg = err["msg"].removeprefix("Value error, ")
        # Cross-field checks run on a whole spec and name their fields in the message.
        line = f"  {_path_text(loc)}: {msg}" if loc else f"  {msg}"
        if err["type"] not in ("missing",) and not isinstance(err.get("input"), dict):
            line += f" (got {_short(err.get('input'))})"
        lines.append(line)
    return "\n".join(lines)


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None


def validate(cls: type[T], data: Any, where: str, prefix: tuple = ()) -> T:
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping of fields for {cls.__name__}, got {_short(data)}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise SpecError(
            f"{where}: invalid {cls.__name__}:\n{format_validation_error(exc, prefix)}"
        ) from None


def _resolve(ref: str, base_dir: Path, bundled_dir: Path, kind: str) -> Path:
    candidates = [base_dir / ref, Path(ref), bundled_dir / ref, bundled_dir / f"{ref}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    names = ", ".join(sorted(p.stem for p in bundled_dir.glob("*.yaml")))
    raise SpecError(f"{kind} {ref!r} is neither a file nor a bundled {kind} (bundled: {names})")


def _mapping_or_ref(value: Any, base_dir: Path, bundled_dir: Path, kind: str) -> tuple[Any, str]:
    if isinstance(value, str):
        path = _resolve(value, base_dir, bundled_dir, kind)
        return read_yaml(path), str(path)
    return value, kind


def load_model(ref: str | Path) -> ModelSpec:
    """A model from a path or a bundled name (``engram-27b``)."""
    path = _resolve(str(ref), Path.cwd(), MODELS_DIR, "model")
    return validate(ModelSpec, read_yaml(path), str(path))


def load_hardware(ref: str | Path) -> HardwareSpec:
    """A hardware profile from a path or a preset name (``h100-sxm``)."""
    path = _resolve(str(ref), Path.cwd(), PROFILES_DIR, "hardware profile")
    return validate(HardwareSpec, read_yaml(path), str(path))


def resolve_scenario_dict(data: Any, base_dir: Path, where: str) -> dict:
    """Inline the ``model`` and ``hardware`` references of a scenario mapping."""
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping with model, hardware and workload")
    data = dict(data)
    for key, bundled, kind in (("model", MODELS_DIR, "model"), ("hardware", PROFILES_DIR, "hardware profile")):
        if key in data:
            value, source = _mapping_or_ref(data[key], base_dir, bundled, kind)
            if isinstance(data[key], str):
                # Validate the referenced file on its own so errors name that file.
                validate(ModelSpec if key == "model" else HardwareSpec, value, source)
            data[key] = value
    return data


def scenario_from_dict(data: Any, base_dir: Path | None = None, where: str = "scenario") -> Scenario:
    resolved = resolve_scenario_dict(data, base_dir or Path.cwd(), where)
    return validate(Scenario, resolved, where)


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    if not path.is_file() and (SCENARIOS_DIR / f"{path}.yaml").is_file():
        path = SCENARIOS_DIR / f"{path}.yaml"
    return scenario_from_dict(read_yaml(path), path.parent, str(path))


def bundled_profiles() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PROFILES_DIR.glob("*.yaml"))}


def bundled_models() -> dict[str, Path]:
    return {p.stem: p for p in sorted(MODELS_DIR.glob("*.yaml"))}
