"""Reading specs from YAML: the boundary where bad input becomes a clear error.

Every failure raises :class:`SpecError`, whose message names the file, the field path
(``model.engram.layer_ids[1]``) and the offending value; the CLI prints it and exits 2.
``model:`` and ``hardware:`` in a scenario may name a bundled file or a path relative to the
scenario file.
"""

from __future__ import annotations

import difflib
import reprlib
import types
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from planner.specs import HardwareSpec, ModelSpec, Scenario
from planner.specs.limits import YAML_BYTES, YAML_DEPTH, YAML_NODES

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


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 6, 6, 4
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 60


def _short(value: Any, limit: int = 60) -> str:
    """A bounded repr: never renders more than a few levels and items of a big value."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"<an integer of about {int(value.bit_length() * 0.30103) + 1:,} digits>"
    try:
        text = _REPR.repr(value)
    except (ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- "did you mean"


def _unwrap(tp: Any) -> list:
    """The concrete types behind Annotated / Optional / Union."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _unwrap(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return [t for a in get_args(tp) if a is not type(None) for t in _unwrap(a)]
    return [tp]


def _model_at(cls: type, loc: tuple) -> type | None:
    """The spec class that holds the field at ``loc`` (loc as pydantic reports it, with the tag of
    a discriminated union as a path element)."""
    options = [cls]
    for part in loc:
        nxt = []
        for tp in options:
            origin = get_origin(tp)
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                if isinstance(part, str) and part in tp.model_fields:
                    nxt += _unwrap(tp.model_fields[part].annotation)
            elif origin in (list, tuple) and isinstance(part, int) and get_args(tp):
                nxt += _unwrap(get_args(tp)[0])
            elif origin is dict and len(get_args(tp)) == 2:
                nxt += _unwrap(get_args(tp)[1])
        if not nxt:  # a union's tag ("mla"): keep the member whose `kind` it is
            nxt = [tp for tp in options if isinstance(tp, type) and issubclass(tp, BaseModel)
                   and "kind" in tp.model_fields and tp.model_fields["kind"].default == part]
        options = nxt
    models = [tp for tp in options if isinstance(tp, type) and issubclass(tp, BaseModel)]
    return models[0] if len(models) == 1 else None


def _closest(word: str, choices) -> str | None:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, choices) -> str:
    """``"; did you mean 'studies'?"`` when one of ``choices`` is close to ``word``, else ``""``."""
    close = _closest(word, choices)
    return f"; did you mean {close!r}?" if close else ""


def format_validation_error(exc: ValidationError, prefix: tuple = (), cls: type | None = None) -> str:
    errors = exc.errors(include_url=False)
    suggested: dict[tuple, str] = {}  # loc of a misspelt key -> the missing field it means
    if cls is not None:
        missing = {tuple(e["loc"]) for e in errors if e["type"] == "missing"}
        for err in errors:
            loc = tuple(err["loc"])
            if err["type"] == "extra_forbidden" and loc and isinstance(loc[-1], str):
                model = _model_at(cls, loc[:-1])
                close = _closest(loc[-1], model.model_fields) if model is not None else None
                if close is not None:
                    suggested[loc] = f"; did you mean {close!r}?"
                    missing.discard(loc[:-1] + (close,))  # "studies: Field required" is the same mistake
        errors = [e for e in errors if e["type"] != "missing" or tuple(e["loc"]) in missing
                  or not any(tuple(e["loc"])[:-1] == s[:-1] for s in suggested)]
    lines = []
    for err in errors:
        loc = prefix + tuple(err["loc"])
        # Discriminated unions add the tag ("gqa", "fixed") to the path: drop it, it is noise.
        loc = tuple(p for p in loc if p not in {"gqa", "mla", "fixed", "uniform", "lognormal",
                                                 "inference", "training"})
        msg = err["msg"].removeprefix("Value error, ")
        msg += suggested.get(tuple(err["loc"]), "")
        if err["type"] == "literal_error" and isinstance(err.get("input"), str):
            msg += did_you_mean(err["input"], [v.strip("'") for v in
                                               str(err.get("ctx", {}).get("expected", "")).replace(" or ", ", ").split(", ")])
        # Cross-field checks run on a whole spec and name their fields in the message.
        line = f"  {_path_text(loc)}: {msg}" if loc else f"  {msg}"
        if err["type"] not in ("missing",) and not isinstance(err.get("input"), dict):
            line += f" (got {_short(err.get('input'))})"
        lines.append(line)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- bounded YAML


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the input bounded: nesting depth (checked while composing, so a
    deep file cannot exhaust Python's stack), the number of values with every alias expanded
    (a kilobyte "billion laughs" expands to billions), numbers' length, and duplicate keys."""

    def compose_node(self, parent, index):
        self._depth = getattr(self, "_depth", 0) + 1
        if self._depth > YAML_DEPTH.value():
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"line {mark.line + 1}: more than {YAML_DEPTH.value()} levels of nesting "
                                 f"(set {YAML_DEPTH.env} to raise the limit)")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    if key_node.value in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key_node.value!r} (first at line {seen[key_node.value]})",
                            key_node.start_mark)
                    seen[key_node.value] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _check_number(loader, node):
    if len(node.value) > 64:
        raise yaml.constructor.ConstructorError(
            None, None, f"a number {len(node.value):,} characters long (at most 64)", node.start_mark)


def _int(loader, node):
    _check_number(loader, node)
    return yaml.SafeLoader.construct_yaml_int(loader, node)


def _float(loader, node):
    _check_number(loader, node)
    return yaml.SafeLoader.construct_yaml_float(loader, node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _int)
_BoundedLoader.add_constructor("tag:yaml.org,2002:float", _float)


def _expanded_size(node, limit: int) -> int:
    """Values in the document with every alias expanded (stops counting past ``limit``)."""
    sizes: dict[int, int] = {}
    busy: set[int] = set()

    def size(n) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in busy:
            raise yaml.YAMLError(f"line {n.start_mark.line + 1}: an alias refers to a value that contains it "
                                 "(a recursive structure)")
        busy.add(key)
        total = 1
        if isinstance(n, yaml.SequenceNode):
            for child in n.value:
                total += size(child)
                if total > limit:
                    break
        elif isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                total += size(k) + size(v)
                if total > limit:
                    break
        busy.discard(key)
        sizes[key] = total
        return total

    return size(node)


def loads_yaml(text: str, where: str) -> Any:
    """Parse YAML text with the bounds of :class:`_BoundedLoader`; errors name ``where``."""
    if len(text) > YAML_BYTES.value():
        raise SpecError(f"{where}: {len(text):,} characters of YAML is above the limit of "
                        f"{YAML_BYTES.value():,}; set {YAML_BYTES.env} to raise it (docs/limits.md)")
    loader = _BoundedLoader(text)
    loader.name = where
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        count = _expanded_size(node, YAML_NODES.value())
        if count > YAML_NODES.value():
            raise SpecError(f"{where}: more than {YAML_NODES.value():,} YAML values once its aliases (*name) are "
                            f"expanded; set {YAML_NODES.env} to raise the limit (docs/limits.md)")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise SpecError(f"{where}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for the file system, a path through a file, ...
        return False


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        if path.is_dir():
            raise SpecError(f"{path}: is a directory, not a YAML file")
        if not path.exists():
            raise SpecError(f"{path}: no such file")
        if not path.is_file():
            raise SpecError(f"{path}: not a regular file")
        size = path.stat().st_size
        if size > YAML_BYTES.value():
            raise SpecError(f"{path}: {size:,} bytes is above the limit of {YAML_BYTES.value():,} bytes of YAML; "
                            f"set {YAML_BYTES.env} to raise it (docs/limits.md)")
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"{_short(str(path), 80)}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not a UTF-8 text file (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                        "specs are YAML text") from None
    return loads_yaml(text, str(path))


def validate(cls: type[T], data: Any, where: str, prefix: tuple = ()) -> T:
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping of fields for {cls.__name__}, got {_short(data)}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise SpecError(
            f"{where}: invalid {cls.__name__}:\n{format_validation_error(exc, prefix, cls)}"
        ) from None


def _resolve(ref: str, base_dir: Path, bundled_dir: Path, kind: str) -> Path:
    candidates = [base_dir / ref, Path(ref), bundled_dir / ref, bundled_dir / f"{ref}.yaml"]
    for candidate in candidates:
        if _is_file(candidate):
            return candidate
    bundled = sorted(p.stem for p in bundled_dir.glob("*.yaml"))
    shown = _short(ref, 80)
    for candidate in candidates[:2]:
        try:
            if candidate.is_dir():
                raise SpecError(f"{kind} {shown}: {candidate} is a directory, not a YAML file")
        except OSError:
            pass
    if len(ref) > 255:
        raise SpecError(f"{kind} {shown} ({len(ref)} characters) is neither a file nor a bundled {kind} "
                        f"(bundled: {', '.join(bundled)})")
    raise SpecError(f"{kind} {ref!r} is neither a file nor a bundled {kind}{did_you_mean(ref, bundled)} "
                    f"(bundled: {', '.join(bundled)})")


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


def _merged(base: Any, over: Any) -> Any:
    """``over`` laid on ``base``: mappings merge key by key, anything else replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merged(base.get(k), v)
        return out
    return over


def resolve_scenario_dict(data: Any, base_dir: Path, where: str) -> dict:
    """Inline the ``model`` and ``hardware`` references of a scenario mapping. A reference is a
    name or path, or a mapping with ``base:`` (a name or path) whose other keys override the
    referenced file's (``hardware: {base: h800, device: {count: 1}}``; mappings merge key by
    key, lists and values replace)."""
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping with model, hardware and workload")
    data = dict(data)
    for key, bundled, kind in (("model", MODELS_DIR, "model"), ("hardware", PROFILES_DIR, "hardware profile")):
        if key not in data:
            continue
        ref, overrides = data[key], None
        if isinstance(ref, dict) and "base" in ref:
            overrides = {k: v for k, v in ref.items() if k != "base"}
            ref = ref["base"]
            if not isinstance(ref, str):
                raise SpecError(f"{where}: {key}.base must name a bundled {kind} or a YAML file, got {_short(ref)}")
        value, source = _mapping_or_ref(ref, base_dir, bundled, kind)
        if isinstance(ref, str):
            # Validate the referenced file on its own so errors name that file.
            validate(ModelSpec if key == "model" else HardwareSpec, value, source)
        data[key] = _merged(value, overrides) if overrides is not None else value
    return data


def scenario_from_dict(data: Any, base_dir: Path | None = None, where: str = "scenario") -> Scenario:
    resolved = resolve_scenario_dict(data, base_dir or Path.cwd(), where)
    return validate(Scenario, resolved, where)


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    if not _is_file(path):
        if _is_file(SCENARIOS_DIR / f"{path}.yaml"):
            path = SCENARIOS_DIR / f"{path}.yaml"
        elif not _exists(path) and "/" not in str(path) and not str(path).endswith((".yaml", ".yml")):
            path = _resolve(str(path), Path.cwd(), SCENARIOS_DIR, "scenario")  # raises, naming the bundled ones
    return scenario_from_dict(read_yaml(path), path.parent, str(path))


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False


def bundled_profiles() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PROFILES_DIR.glob("*.yaml"))}


def bundled_models() -> dict[str, Path]:
    return {p.stem: p for p in sorted(MODELS_DIR.glob("*.yaml"))}
