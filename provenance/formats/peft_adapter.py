"""PEFT LoRA adapters: a folder with ``adapter_config.json`` and ``adapter_model.safetensors``.

An adapter is not a model: it holds, for each targeted module, the low-rank factors of an
update ``delta W = scale * B @ A`` (PEFT's ``get_delta_weight``; ``scale = alpha / r``, or
``alpha / sqrt(r)`` with rsLoRA; per-module ``r`` and ``alpha`` from ``rank_pattern`` /
``alpha_pattern``), plus full copies of any module it retrains whole (``modules_to_save``, or a
resized embedding saved as ``base_layer``). This reader validates the config (every field
typed and bounded), pairs ``lora_A``/``lora_B`` per module and checks that their shapes agree
with each other and with the config's rank. It opens as a checkpoint of its stored tensors;
what the adapter does to a base model (``base + scale * B @ A``) is
:mod:`provenance.compare.adapter`'s, which also checks the shapes against that base.

docs/lineage.md, "PEFT adapters", says how to compare one.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any, Literal

from provenance.errors import MalformedCheckpoint, PickleCheckpointRefused, UnsupportedCheckpoint
from provenance.formats.files import read_capped
from provenance.formats.jsonsafe import loads_strict, text_offset
from provenance.formats.safetensors_reader import SafetensorsCheckpoint

CONFIG_NAME, WEIGHTS_NAME, PICKLE_NAME = "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"
MAX_CONFIG_BYTES = 4 << 20
MAX_RANK = 1 << 16
MAX_PATTERNS = 4096
MAX_NAME = 4096
_PREFIX = "base_model.model."
_LORA = re.compile(r"^base_model\.model\.(?P<module>.+)\.(?:(?P<linear>lora_[AB])\.weight|(?P<embedding>lora_embedding_[AB]))$",
                   re.DOTALL)
_REGEX_META = re.compile(r"[\\^$*+?{}()|\[\]]")
FLOAT_TYPES = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class AdapterConfig:
    """The fields of ``adapter_config.json`` that decide what the adapter does, validated."""

    peft_type: str
    r: int
    lora_alpha: float
    target_modules: tuple[str, ...]
    """As declared: module names, or one regular expression (kept as text, never evaluated)."""
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    modules_to_save: tuple[str, ...] = ()
    base_model_name_or_path: str | None = None
    task_type: str | None = None
    peft_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"peft_type": self.peft_type, "r": self.r, "lora_alpha": self.lora_alpha,
                "target_modules": list(self.target_modules), "rank_pattern": dict(self.rank_pattern),
                "alpha_pattern": dict(self.alpha_pattern), "use_rslora": self.use_rslora,
                "fan_in_fan_out": self.fan_in_fan_out, "modules_to_save": list(self.modules_to_save),
                "base_model_name_or_path": self.base_model_name_or_path, "task_type": self.task_type,
                "peft_version": self.peft_version}


@dataclass(frozen=True)
class LoraModule:
    """One targeted module: ``delta = scale * B @ A`` (linear) or ``scale * (B @ A).T`` (embedding)."""

    module: str
    """PEFT's module name inside the model (``model.layers.0.self_attn.q_proj``)."""
    kind: Literal["linear", "embedding"]
    a: str
    """Stored name of ``lora_A`` (``(r, in)``; embedding: ``(r, vocabulary)``)."""
    b: str
    """Stored name of ``lora_B`` (``(out, r)``; embedding: ``(dim, r)``)."""
    rank: int
    alpha: float
    scale: float
    shape: tuple[int, int]
    """The shape of the weight it updates, rows first (``(out, in)``; embedding ``(vocabulary, dim)``)."""

    @property
    def weight(self) -> str:
        """The updated weight's HF name."""
        return f"{self.module}.weight"

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "kind": self.kind, "rank": self.rank, "alpha": self.alpha, "scale": self.scale,
                "shape": list(self.shape)}


def is_adapter_folder(directory: str) -> bool:
    """A PEFT adapter folder: its config and adapter weights, and no full model weights beside them."""
    names = set(os.listdir(directory))
    return CONFIG_NAME in names and bool({WEIGHTS_NAME, PICKLE_NAME} & names) and not any(
        n.startswith("model") and n.endswith((".safetensors", ".safetensors.index.json")) for n in names)


# ----- adapter_config.json ----------------------------------------------------------------------

class _Config:
    """Typed access to one parsed JSON object, each error naming the field and its offset."""

    def __init__(self, document: Any, raw: bytes, path: str) -> None:
        if type(document) is not dict:
            raise MalformedCheckpoint(path, "adapter_config.json is not a JSON object", field="adapter_config", offset=0)
        self.document, self.raw, self.path = document, raw, path

    def fail(self, key: str, message: str, value: Any = None) -> MalformedCheckpoint:
        return MalformedCheckpoint(self.path, message, field=f"adapter_config: {key}",
                                   offset=text_offset(self.raw, value, key))

    def get(self, key: str, kinds: tuple[type, ...], default: Any = None, *, required: bool = False) -> Any:
        value = self.document.get(key)
        if value is None:
            if required:
                raise self.fail(key, f"{key} is required")
            return default
        if type(value) not in kinds:
            names = " or ".join("number" if k is float else k.__name__ for k in kinds)
            raise self.fail(key, f"expected {names}, found {type(value).__name__} {str(value)[:40]!r}", value)
        return value

    def number(self, key: str, value: Any, lo: float, hi: float) -> float:
        if type(value) not in (int, float) or not (math.isfinite(value) and lo <= value <= hi):
            raise self.fail(key, f"expected a finite number in [{lo:g}, {hi:g}], found {str(value)[:40]!r}", value)
        return float(value)

    def rank(self, key: str, value: Any) -> int:
        if type(value) is not int or not 1 <= value <= MAX_RANK:
            raise self.fail(key, f"expected a rank in [1, {MAX_RANK}], found {str(value)[:40]!r}", value)
        return value

    def names(self, key: str, value: Any) -> tuple[str, ...]:
        items = [value] if type(value) is str else value
        if type(items) is not list or len(items) > MAX_PATTERNS or not all(type(v) is str and len(v) <= MAX_NAME for v in items):
            raise self.fail(key, f"expected module names (at most {MAX_PATTERNS})")
        return tuple(items)

    def pattern(self, key: str, check: Any) -> dict[str, Any]:
        value = self.get(key, (dict,), {})
        if len(value) > MAX_PATTERNS:
            raise self.fail(key, f"{len(value)} entries exceed the cap of {MAX_PATTERNS}")
        for name in value:
            if not name or len(name) > MAX_NAME:
                raise self.fail(key, "a pattern key must be a module name")
            if _REGEX_META.search(name):  # PEFT matches these as regular expressions; never run one from a file
                raise UnsupportedCheckpoint(self.path, f"{key} key {name[:60]!r} is a regular expression; only module "
                                                       "names are supported", field=f"adapter_config: {key}",
                                            offset=text_offset(self.raw, name))
        return {name: check(f"{key}.{name}", v) for name, v in value.items()}


def parse_adapter_config(raw: bytes, path: str) -> AdapterConfig:
    """``adapter_config.json`` -> :class:`AdapterConfig`; LoRA only (DoRA, biases and other PEFT
    methods are refused as unsupported, naming the field)."""
    c = _Config(loads_strict(raw, path, "adapter_config"), raw, path)
    peft_type = c.get("peft_type", (str,), required=True)
    if peft_type != "LORA":
        raise UnsupportedCheckpoint(path, f"PEFT type {peft_type[:40]!r} is not supported (LoRA adapters are)",
                                    field="adapter_config: peft_type", offset=text_offset(raw, peft_type))
    for key, what in (("use_dora", "DoRA (weight-decomposed) adapters"), ("lora_bias", "adapters with LoRA biases")):
        if c.get(key, (bool,), False):
            raise UnsupportedCheckpoint(path, f"{what} are not supported", field=f"adapter_config: {key}",
                                        offset=text_offset(raw, None, key))
    bias = c.get("bias", (str,), "none")
    if bias != "none":
        raise UnsupportedCheckpoint(path, f"bias {bias[:20]!r}: adapters that train biases are not supported",
                                    field="adapter_config: bias", offset=text_offset(raw, bias))
    r = c.rank("r", c.get("r", (int,), required=True))
    alpha = c.number("lora_alpha", c.get("lora_alpha", (int, float), float(r)), -1e6, 1e6)
    base = c.get("base_model_name_or_path", (str,))
    if base is not None and len(base) > MAX_NAME:
        raise c.fail("base_model_name_or_path", f"longer than {MAX_NAME} characters")
    return AdapterConfig(
        peft_type=peft_type, r=r, lora_alpha=alpha,
        target_modules=c.names("target_modules", c.get("target_modules", (list, str), [])),
        rank_pattern=c.pattern("rank_pattern", c.rank),
        alpha_pattern=c.pattern("alpha_pattern", lambda key, v: c.number(key, v, -1e6, 1e6)),
        use_rslora=c.get("use_rslora", (bool,), False), fan_in_fan_out=c.get("fan_in_fan_out", (bool,), False),
        modules_to_save=c.names("modules_to_save", c.get("modules_to_save", (list,), [])),
        base_model_name_or_path=base, task_type=c.get("task_type", (str,)),
        peft_version=c.get("peft_version", (str,)))


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's ``get_pattern_key``: the first key that is the module's name or a dotted suffix of it."""
    for key, value in patterns.items():
        if module == key or module.endswith("." + key):
            return value
    return default


# ----- the checkpoint ---------------------------------------------------------------------------

class PeftAdapterCheckpoint(SafetensorsCheckpoint):
    """An adapter folder opened as its stored tensors, with its validated config, its LoRA
    modules and its full replacement tensors (HF weight name -> stored name)."""

    format = "peft-adapter"

    def __init__(self, directory: str) -> None:
        config_path = os.path.join(directory, CONFIG_NAME)
        weights = os.path.join(directory, WEIGHTS_NAME)
        if not os.path.isfile(weights):
            if os.path.exists(os.path.join(directory, PICKLE_NAME)):
                raise PickleCheckpointRefused(os.path.join(directory, PICKLE_NAME), "pickle adapters are never loaded "
                                              "(they can run code); save the adapter with safe_serialization")
            raise UnsupportedCheckpoint(directory, f"no {WEIGHTS_NAME} in this adapter folder", field="directory")
        self.adapter_config = parse_adapter_config(read_capped(config_path, "adapter_config", MAX_CONFIG_BYTES),
                                                   config_path)
        super().__init__(weights)
        self.path = directory
        self.modules, self.replacements = self._pair()
        self.metadata["adapter_config"] = self.adapter_config.to_dict()

    def _entry_error(self, name: str, message: str, cls: type[MalformedCheckpoint] = MalformedCheckpoint) -> Exception:
        return cls(self.files[0].path, message, field=name, offset=8)

    def _pair(self) -> tuple[tuple[LoraModule, ...], dict[str, str]]:
        config = self.adapter_config
        parts: dict[str, dict[str, str]] = {}
        kinds: dict[str, Literal["linear", "embedding"]] = {}
        replacements: dict[str, str] = {}
        for info in self.tensors.values():
            name = info.stored_name
            if info.dtype not in FLOAT_TYPES or len(info.shape) != 2:
                raise self._entry_error(name, f"expected a 2-D float tensor, found {info.dtype}{list(info.shape)}",
                                        UnsupportedCheckpoint)
            match = _LORA.match(name)
            if match is None:
                if not name.startswith(_PREFIX) or not name.endswith(".weight"):
                    raise self._entry_error(name, "not a LoRA factor nor a saved module of the base model",
                                            UnsupportedCheckpoint)
                target = name[len(_PREFIX):].replace(".base_layer.weight", ".weight")
                replacements[target] = name
                continue
            module = match.group("module")
            part = match.group("linear") or match.group("embedding")
            kind: Literal["linear", "embedding"] = "linear" if match.group("linear") else "embedding"
            if kinds.setdefault(module, kind) != kind:
                raise self._entry_error(name, f"module {module!r} has both linear and embedding LoRA factors")
            parts.setdefault(module, {})[part[-1]] = name
        modules = []
        for module, pair in sorted(parts.items()):
            if set(pair) != {"A", "B"}:
                missing = ({"A", "B"} - set(pair)).pop()
                raise self._entry_error(next(iter(pair.values())), f"module {module!r} has no lora_{missing} factor")
            modules.append(self._module(module, kinds[module], pair["A"], pair["B"], config))
        if not modules and not replacements:
            raise UnsupportedCheckpoint(self.files[0].path, "the adapter holds no LoRA factors", field="tensors")
        return tuple(modules), replacements

    def _module(self, module: str, kind: Literal["linear", "embedding"], a: str, b: str, config: AdapterConfig) -> LoraModule:
        shape_a, shape_b = self.stored(a).shape, self.stored(b).shape
        rank = shape_a[0]
        if shape_b[1] != rank:
            raise self._entry_error(b, f"lora_B has {shape_b[1]} columns but lora_A has {rank} rows: not one rank")
        declared = _pattern_value(config.rank_pattern, module, config.r)
        if rank != declared:
            raise self._entry_error(a, f"rank {rank} in the weights, {declared} in adapter_config.json "
                                       f"({'rank_pattern' if declared != config.r else 'r'})")
        alpha = _pattern_value(config.alpha_pattern, module, config.lora_alpha)
        scale = alpha / math.sqrt(rank) if config.use_rslora else alpha / rank
        if kind == "linear":
            shape = (shape_a[1], shape_b[0]) if config.fan_in_fan_out else (shape_b[0], shape_a[1])
        else:
            shape = (shape_a[1], shape_b[0])
        return LoraModule(module, kind, a, b, rank, float(alpha), float(scale), shape)

    def stored(self, stored_name: str) -> Any:
        """The table entry of a tensor by its stored name (names are not canonical here)."""
        return self.tensors[stored_name]

    @property
    def metadata_claims(self) -> dict[str, Any]:
        claims: dict[str, Any] = {"peft.peft_type": self.adapter_config.peft_type}
        if self.adapter_config.base_model_name_or_path:
            claims["peft.base_model_name_or_path"] = self.adapter_config.base_model_name_or_path
        return {**claims, **self.beside_claims()}
