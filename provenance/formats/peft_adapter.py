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
from provenance.formats.documents import LORA_ADAPTER_CONFIG
from provenance.formats.files import member_if_present, read_capped
from provenance.formats.jsonsafe import text_offset
from provenance.formats.safetensors_reader import SafetensorsCheckpoint
from provenance.formats.schema import parse_document

CONFIG_NAME, WEIGHTS_NAME, PICKLE_NAME = "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"
MAX_CONFIG_BYTES = 4 << 20
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

def _unsupported(path: str, raw: bytes, key: str, message: str, value: Any = None) -> UnsupportedCheckpoint:
    return UnsupportedCheckpoint(path, message, field=key, offset=text_offset(raw, value, key))


def _module_names(path: str, raw: bytes, key: str, patterns: dict[str, Any]) -> None:
    """PEFT matches ``rank_pattern``/``alpha_pattern`` keys as regular expressions: never run one
    from a file, so only plain module names are accepted."""
    for name in patterns:
        if not name or _REGEX_META.search(name):
            raise _unsupported(path, raw, key, f"{key} key {name[:60]!r} is not a module name (PEFT would match it as "
                                               "a regular expression); only module names are supported", name)


def parse_adapter_config(raw: bytes, path: str) -> AdapterConfig:
    """``adapter_config.json`` -> :class:`AdapterConfig`: the document validated by its schema
    (:data:`provenance.formats.documents.LORA_ADAPTER_CONFIG`: every field typed and bounded), then
    LoRA only (DoRA, biases and other PEFT methods are refused as unsupported, naming the field)."""
    c = parse_document(raw, LORA_ADAPTER_CONFIG, path, "adapter_config")
    if c["peft_type"] != "LORA":
        raise _unsupported(path, raw, "peft_type", f"PEFT type {c['peft_type'][:40]!r} is not supported "
                                                   "(LoRA adapters are)", c["peft_type"])
    for key, what in (("use_dora", "DoRA (weight-decomposed) adapters"), ("lora_bias", "adapters with LoRA biases")):
        if c.get(key):
            raise _unsupported(path, raw, key, f"{what} are not supported")
    bias = c.get("bias") or "none"
    if bias != "none":
        raise _unsupported(path, raw, "bias", f"bias {bias[:20]!r}: adapters that train biases are not supported", bias)
    rank_pattern, alpha_pattern = c.get("rank_pattern") or {}, c.get("alpha_pattern") or {}
    _module_names(path, raw, "rank_pattern", rank_pattern)
    _module_names(path, raw, "alpha_pattern", alpha_pattern)
    targets = c.get("target_modules") or []
    r = c["r"]
    alpha = c.get("lora_alpha")
    return AdapterConfig(
        peft_type=c["peft_type"], r=r, lora_alpha=float(r if alpha is None else alpha),
        target_modules=(targets,) if isinstance(targets, str) else tuple(targets),
        rank_pattern=dict(rank_pattern), alpha_pattern={k: float(v) for k, v in alpha_pattern.items()},
        use_rslora=bool(c.get("use_rslora")), fan_in_fan_out=bool(c.get("fan_in_fan_out")),
        modules_to_save=tuple(c.get("modules_to_save") or ()),
        base_model_name_or_path=c.get("base_model_name_or_path"), task_type=c.get("task_type"),
        peft_version=c.get("peft_version"))


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
        # Every file by its fixed name, resolved inside the folder (symlinks out are refused).
        weights = member_if_present(directory, WEIGHTS_NAME, WEIGHTS_NAME)
        if weights is None:
            pickled = member_if_present(directory, PICKLE_NAME, PICKLE_NAME)
            if pickled is not None:
                raise PickleCheckpointRefused(pickled, "pickle adapters are never loaded "
                                              "(they can run code); save the adapter with safe_serialization")
            raise UnsupportedCheckpoint(directory, f"no {WEIGHTS_NAME} in this adapter folder", field="directory")
        config_path = member_if_present(directory, CONFIG_NAME, CONFIG_NAME)
        if config_path is None:
            raise UnsupportedCheckpoint(directory, f"no {CONFIG_NAME} in this adapter folder", field="directory")
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
