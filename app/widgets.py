"""Shared input widgets: each draws its Streamlit inputs and returns a plain spec mapping.

Widgets return mappings (the YAML form of a spec), not specs: a page assembles them into one
scenario and validates it once with :func:`planner.loading.scenario_from_dict`, so a bad value
is reported with its full field path (``hardware.link.h2d_bandwidth``) by :func:`show_error`.

Keys: every widget key starts with the caller's ``scope``. Pages scope the inputs that follow a
starting scenario by its name (``wi.cpu-tiny``), and the hardware and model fields by the chosen
preset (``wi.cpu-tiny.hw.h100-sxm.f.link.h2d_bandwidth``): a new choice is a new set of widgets
that read their defaults from it. (Deleting keys in a callback is not enough in a browser, whose
frontend sends the old values back.)
Quantities are shown in datasheet units (GB/s, TFLOP/s) and stored in SI, as the specs are.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import streamlit as st
import yaml

from planner.loading import (
    SCENARIOS_DIR,
    SpecError,
    bundled_models,
    bundled_profiles,
    loads_yaml,
    read_yaml,
    scenario_from_dict,
    validate,
)
from planner.specs import HardwareSpec, ModelSpec, Scenario

UPLOAD = "Upload YAML…"
SCENARIO_OWN = "(as in the scenario)"
TIERS = ["device", "host", "disk"]
DEFAULT_TIER = "default"

# Key hardware fields: (path in the profile, label, display scale, display unit, integer?).
# Everything else is reachable through the YAML overrides box.
HW_FIELDS: list[tuple[tuple[str, ...], str, float, str, bool]] = [
    (("device", "count"), "GPUs per node", 1.0, "", True),
    (("device", "memory"), "Device memory", 1e9, "GB", False),
    (("device", "memory_bandwidth"), "Device memory bandwidth", 1e12, "TB/s", False),
    (("device", "flops", "bf16"), "BF16 dense peak", 1e12, "TFLOP/s", False),
    (("link", "h2d_bandwidth"), "Host→device link", 1e9, "GB/s", False),
    (("link", "devices_per_link"), "Devices per link (PCIe switch)", 1.0, "", True),
    (("host", "cores"), "Host cores", 1.0, "", True),
    (("host", "memory"), "Host DRAM", 1e9, "GB", False),
    (("host", "memory_bandwidth"), "Host DRAM bandwidth", 1e9, "GB/s", False),
    (("host", "gather_bandwidth_per_core"), "Row gather rate per core", 1e9, "GB/s", False),
    (("nvme", "read_bandwidth"), "NVMe read bandwidth", 1e9, "GB/s", False),
    (("efficiency", "link"), "Link efficiency (fraction of line rate)", 1.0, "", False),
]


# ----------------------------------------------------------------------------- helpers


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` laid over ``base``, mappings merged key by key, anything else replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def number_field(container, label: str, value: float, *, field: str, minimum: float | None = None,
                 maximum: float | None = None, integer: bool = False, unit: str = "", **kwargs) -> float:
    """A number input whose bounds are checked here, not by the browser: Streamlit's own
    ``min_value`` turns a typed -5 red but keeps the old value in use, silently. Out of bounds
    is a SpecError naming the field path and the value as typed (in the field's display unit)."""
    if integer:
        new = container.number_input(label, value=int(value), step=kwargs.pop("step", 1), **kwargs)
    else:
        new = container.number_input(label, value=float(value), format=kwargs.pop("format", "%.4g"), **kwargs)
    shown = f"{new:g}{' ' + unit if unit else ''}"
    if minimum is not None and new < minimum:
        raise SpecError(f"{field}: {label} must be at least {minimum:g}{' ' + unit if unit else ''}, got {shown}")
    if maximum is not None and new > maximum:
        raise SpecError(f"{field}: {label} must be at most {maximum:g}{' ' + unit if unit else ''}, got {shown}")
    return int(new) if integer else float(new)


def parse_yaml_text(text: str, where: str) -> Any:
    """YAML typed or uploaded in the page, under the same bounds as files (alias expansion,
    depth, size): a SpecError naming ``where``."""
    return loads_yaml(text, where) if text.strip() else None


def yaml_overrides(key: str, where: str, help_text: str, example: str) -> dict:
    """A text area of YAML laid over a spec; empty means no change."""
    text = st.text_area(f"YAML overrides ({where})", key=key, height=110, placeholder=example,
                        help=help_text)
    data = parse_yaml_text(text, f"{where} overrides")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"{where} overrides: expected a mapping of fields, got {data!r}")
    return data


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def show_error(exc: Exception) -> None:
    """A SpecError/ValueError as an in-page message: headline, then one line per bad field."""
    head, *rest = str(exc).strip().split("\n")
    lines = [f"**Invalid input.** {head}"]
    for line in rest:
        path, sep, msg = line.strip().partition(": ")
        lines.append(f"- `{path}`: {msg}" if sep and " " not in path else f"- {line.strip()}")
    st.error("\n".join(lines), icon="⚠️")


@st.cache_data(show_spinner=False)
def _titles(paths: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for p in paths:
        data = read_yaml(p) or {}
        tag = " · calibrated" if data.get("source") == "calibrated" or "calibration" in data else ""
        out[Path(p).stem] = f"{Path(p).stem} — {data.get('name', '')}{tag}"
    return out


def profile_titles() -> dict[str, str]:
    return _titles(tuple(str(p) for p in bundled_profiles().values()))


def model_titles() -> dict[str, str]:
    return _titles(tuple(str(p) for p in bundled_models().values()))


def _get(data: dict, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _set(data: dict, path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        data = data.setdefault(part, {})
    data[path[-1]] = value


def _pick_source(label: str, key: str, names: dict[str, str], default: str | dict,
                 what: str) -> tuple[str, dict]:
    """A select box over bundled files (plus the scenario's inline spec and an upload)."""
    options = list(names)
    if isinstance(default, dict):
        options.append(SCENARIO_OWN)
    options.append(UPLOAD)
    if isinstance(default, str) and default in names:
        index = options.index(default)
    elif isinstance(default, dict):
        index = options.index(SCENARIO_OWN)
    else:
        index = 0
    choice = st.selectbox(label, options, index=index, key=key,
                          format_func=lambda o: names.get(o, o))
    if choice == SCENARIO_OWN:
        return choice, copy.deepcopy(default)
    if choice == UPLOAD:
        upload = st.file_uploader(f"{what} YAML", type=["yaml", "yml"], key=f"{key}.upload")
        if upload is None:
            raise SpecError(f"{what}: choose a YAML file to upload, or pick a bundled {what}")
        raw = upload.getvalue()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise SpecError(f"{upload.name}: not a UTF-8 text file (byte 0x{raw[exc.start]:02x} at offset "
                            f"{exc.start}); specs are YAML text") from None
        data = parse_yaml_text(text, upload.name)
        if not isinstance(data, dict):
            raise SpecError(f"{upload.name}: expected a mapping of {what} fields")
        return upload.name, data
    return choice, read_yaml(bundled_profiles().get(choice) or bundled_models()[choice])


# ----------------------------------------------------------------------------- inputs


def scenario_picker(prefix: str, default: str = "h100-engram27b-host") -> tuple[str, dict]:
    """The example scenario every other input starts from: (name, its raw mapping). Scope the
    other inputs with ``f"{prefix}.{name}"``."""
    names = sorted(p.stem for p in SCENARIOS_DIR.glob("*.yaml"))
    name = st.selectbox("Start from example scenario", names,
                        index=names.index(default) if default in names else 0,
                        key=f"{prefix}.start",
                        help="The inputs below start from this scenario's values (examples/scenarios/).")
    return name, read_yaml(SCENARIOS_DIR / f"{name}.yaml")


def hardware_input(scope: str, default: str | dict = "h100-sxm") -> dict:
    """Hardware mapping: a preset or calibrated profile, key fields, then YAML overrides."""
    choice, raw = _pick_source("Hardware profile", f"{scope}.hw", profile_titles(), default, "hardware profile")
    p = f"{scope}.hw.{choice}"
    try:
        current = HardwareSpec.model_validate(raw)
    except Exception:  # shown with its field path once the whole scenario is validated
        current = None
    out = copy.deepcopy(raw)
    with st.expander("Edit hardware", expanded=False):
        st.caption("Key figures in datasheet units; any other field through YAML overrides.")
        # One column: two in the sidebar wrap "bandwidth" mid-word.
        for path, label, scale, unit, integer in HW_FIELDS:
            value = _get(current.model_dump(), path) if current is not None else None
            if value is None:
                continue
            field = "hardware." + ".".join(path)
            text = f"{label} ({unit})" if unit else label
            shown = int(value) if integer else float(value) / scale
            new = number_field(st, text, shown, field=field, minimum=1 if integer else 0.0, integer=integer,
                               unit=unit, key=f"{p}.f.{'.'.join(path)}", help=f"`{'.'.join(path)}`")
            if new != shown:
                _set(out, path, int(new) if integer else float(new) * scale)
        overrides = yaml_overrides(
            f"{p}.yaml", "hardware",
            "Any profile field, e.g. host.numa_nodes or link.latency. Applied after the key figures.",
            "link:\n  latency: 15 us\nhost:\n  engine_cores: 2")
    return deep_merge(out, overrides)


def model_input(scope: str, default: str | dict = "engram-27b") -> dict:
    """Model mapping: a bundled or uploaded model, Engram layers and table size, YAML overrides."""
    choice, raw = _pick_source("Model", f"{scope}.model", model_titles(), default, "model")
    p = f"{scope}.model.{choice}"
    out = copy.deepcopy(raw)
    engram = raw.get("engram") if isinstance(raw.get("engram"), dict) else None
    with st.expander("Edit model", expanded=False):
        if engram is not None:
            layers_default = ", ".join(str(i) for i in engram.get("layer_ids", []))
            text = st.text_input("Engram layer ids (0-based)", value=layers_default,
                                 key=f"{p}.f.layer_ids", help="`engram.layer_ids`, comma separated")
            if text.strip() != layers_default:
                try:
                    ids = [int(x) for x in text.replace(" ", "").split(",") if x]
                except ValueError:
                    raise SpecError(f"model.engram.layer_ids: cannot read {text!r} as comma-separated "
                                    "integers") from None
                twice = sorted({i for i in ids if ids.count(i) > 1})
                if twice:  # said here, before a per-layer widget is built twice
                    raise SpecError(f"model.engram.layer_ids: {text!r} lists layer(s) {twice} more than once; "
                                    "each Engram layer appears once")
                out["engram"]["layer_ids"] = ids
            sizes = engram.get("table_size_per_head")
            first = int(sizes[0] if isinstance(sizes, list) else sizes)
            rows = number_field(st, "Table rows per head (every n-gram order)", first, minimum=1, integer=True,
                                field="model.engram.table_size_per_head", step=100_000, key=f"{p}.f.rows",
                                help="`engram.table_size_per_head`, before rounding up to primes")
            if rows != first:
                out["engram"]["table_size_per_head"] = int(rows)
        else:
            st.caption("This model has no Engram module: the scenario is its own baseline.")
        overrides = yaml_overrides(f"{p}.yaml", "model", "Any model field, e.g. engram.n_heads.",
                                   "engram:\n  embed_dim_per_ngram: 1280")
    return deep_merge(out, overrides)


def workload_input(scope: str, default: dict) -> dict:
    """Workload mapping (inference or training), starting from ``default``."""
    p = f"{scope}.wl"
    kinds = ["inference", "training"]
    kind = st.radio("Workload", kinds, index=kinds.index(default.get("kind", "inference")),
                    key=f"{p}.kind", horizontal=True)
    base = default if default.get("kind", "inference") == kind else {}
    c1, c2 = st.columns(2)
    def count(col, label: str, name: str, fallback: int, **kw) -> int:
        return number_field(col, label, base.get(name, fallback), field=f"workload.{name}", minimum=1,
                            integer=True, key=f"{p}.{kw.pop('suffix', name)}", **kw)

    if kind == "training":
        return {
            "kind": "training",
            "batch_size": count(c1, "Sequences per GPU", "batch_size", 4),
            "seq_len": count(c2, "Sequence length", "seq_len", 4096),
            "steps": count(c1, "Steps", "steps", 4),
            "table_optimizer": c2.selectbox("Table optimiser", ["adam", "sgd"],
                                            index=["adam", "sgd"].index(base.get("table_optimizer", "adam")),
                                            key=f"{p}.opt"),
        }
    out = {"kind": "inference"}
    out["num_sequences"] = count(c1, "Requests", "num_sequences", 256)
    out["max_num_seqs"] = count(c2, "Max batch (sequences)", "max_num_seqs", 128,
                                help="`workload.max_num_seqs` per GPU")
    for name, fallback in (("prompt_len", 512), ("output_len", 256)):
        text = st.text_input(
            name.replace("_", " ").capitalize() + " (tokens)",
            value=_flow(base.get(name, fallback)), key=f"{p}.{name}",
            help="A number, or a distribution: {kind: uniform, low: 64, high: 384} or "
                 "{kind: lognormal, median: 512, sigma: 0.6, min: 32, max: 2048}")
        out[name] = parse_yaml_text(text, f"workload.{name}")
    out["max_batched_tokens"] = count(c1, "Token budget per step", "max_batched_tokens", 8192, suffix="mbt")
    rate = number_field(c2, "Arrival rate (req/s, 0 = all at once)", float(base.get("arrival_rate") or 0.0),
                        field="workload.arrival_rate", minimum=0.0, unit="req/s", key=f"{p}.rate")
    if rate > 0:
        out["arrival_rate"] = float(rate)
    out["seed"] = int(base.get("seed", 0))
    return out


def _flow(value: Any) -> str:
    # in the order the spec writes it ({kind: uniform, low: .., high: ..}), not sorted
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=200).strip().removesuffix("...").strip()


def placement_input(scope: str, default: dict, layer_ids: list[int]) -> dict:
    """Engram placement mapping: tier, per-layer tiers, caches, prefetch, dedup, host mode."""
    p = f"{scope}.pl"
    out: dict = {}
    out["tier"] = st.radio("Engram tables in", TIERS, index=TIERS.index(default.get("tier", "device")),
                           key=f"{p}.tier", horizontal=True,
                           help="device = GPU memory (no fetch), host = pinned DRAM, disk = NVMe")
    layer_tiers = {}
    if len(layer_ids) > 1:
        cols = st.columns(min(len(layer_ids), 4))
        for i, layer in enumerate(layer_ids):
            preset = (default.get("layer_tiers") or {}).get(layer, DEFAULT_TIER)
            options = [DEFAULT_TIER] + TIERS
            choice = cols[i % len(cols)].selectbox(f"Layer {layer} tier", options, index=options.index(preset),
                                                   key=f"{p}.layer.{layer}")
            if choice != DEFAULT_TIER:
                layer_tiers[layer] = choice
    if layer_tiers:
        out["layer_tiers"] = layer_tiers
    out["cache_fraction"] = st.slider("Hot-row cache on GPU (fraction of rows)", 0.0, 1.0,
                                      float(default.get("cache_fraction", 0.0)), 0.005,
                                      key=f"{p}.cache_fraction", format="%.3f")
    out["prefetch"] = st.checkbox("Prefetch at step start", value=bool(default.get("prefetch", True)),
                                  key=f"{p}.prefetch")
    out["dedup"] = st.checkbox("De-duplicate rows", value=bool(default.get("dedup", True)), key=f"{p}.dedup")
    out["pinned"] = st.checkbox("Pinned host memory", value=bool(default.get("pinned", True)), key=f"{p}.pinned")
    policies = ["static", "lru"]
    out["cache_policy"] = st.selectbox("Cache policy", policies,
                                       index=policies.index(default.get("cache_policy", "static")),
                                       key=f"{p}.cache_policy")
    modes = ["staged", "uva"]
    out["host_mode"] = st.radio("Host reads", modes, index=modes.index(default.get("host_mode", "staged")),
                                key=f"{p}.host_mode", horizontal=True,
                                help="staged: CPU gathers rows into a pinned buffer, one DMA copy; "
                                     "uva: GPU kernels read mapped host memory")
    uses_disk = out["tier"] == "disk" or "disk" in layer_tiers.values()
    out["host_cache_fraction"] = st.slider("Disk tier: rows cached in DRAM", 0.0, 1.0,
                                           float(default.get("host_cache_fraction", 0.0)), 0.01,
                                           key=f"{p}.host_cache_fraction", disabled=not uses_disk,
                                           help="the page cache in front of a mapped file, or an engine's own "
                                                "DRAM row cache in front of O_DIRECT reads")
    reads = ["pread", "mmap"]
    out["disk_read"] = st.radio("Disk reads", reads, index=reads.index(default.get("disk_read", "pread")),
                                key=f"{p}.disk_read", horizontal=True, disabled=not uses_disk,
                                help="pread: the rows' pages read ahead of the step (with prefetch), many "
                                     "in flight (O_DIRECT); mmap: the mapped file's cold pages fault in "
                                     "inside the layer, one at a time")
    out["disk_queue_depth"] = number_field(st, "Disk reads in flight", default.get("disk_queue_depth", 128),
                                           field="placement.disk_queue_depth", minimum=1, maximum=65536,
                                           integer=True, key=f"{p}.disk_queue_depth",
                                           disabled=not uses_disk or out["disk_read"] != "pread")
    return out


def scenario_inputs(scope: str, raw: dict, *, hardware: bool = True) -> tuple[dict, Exception | None]:
    """The sidebar's scenario editors (model, hardware if asked, workload, placement), each in
    an expander. Returns the parts as plain mappings and the input error, if any (shown by
    the page, which stops there)."""
    parts: dict = {}
    try:
        with st.expander("Model", expanded=False):
            parts["model"] = model_input(scope, raw.get("model", "engram-27b"))
        if hardware:
            with st.expander("Hardware", expanded=False):
                parts["hardware"] = hardware_input(scope, raw.get("hardware", "h100-sxm"))
        with st.expander("Workload", expanded=False):
            parts["workload"] = workload_input(scope, raw.get("workload", {}))
        with st.expander("Engram placement", expanded=hardware):
            parts["placement"] = placement_input(scope, raw.get("placement", {}), engram_layer_ids(parts["model"]))
    except (SpecError, ValueError) as exc:
        return parts, exc
    return parts, None


def engram_layer_ids(model_data: dict) -> list[int]:
    engram = model_data.get("engram") if isinstance(model_data, dict) else None
    ids = engram.get("layer_ids") if isinstance(engram, dict) else None
    return [int(i) for i in ids if isinstance(i, int)] if isinstance(ids, list) else []


def build_scenario(name: str, model: dict, hardware: dict, workload: dict, placement: dict,
                   description: str = "") -> Scenario:
    """Validate the assembled mappings once; errors name ``model.…``, ``hardware.…`` paths."""
    data = {"name": name, "description": description, "model": model, "hardware": hardware,
            "workload": workload, "placement": placement}
    return scenario_from_dict(data, where="scenario")


def hardware_spec(data: dict, where: str = "hardware") -> HardwareSpec:
    return validate(HardwareSpec, data, where)


def model_spec(data: dict, where: str = "model") -> ModelSpec:
    return validate(ModelSpec, data, where)
