"""PEFT adapter folders as PEFT writes them, read back; hostile configs and factors fail with one
line naming file, field and offset (exit 2)."""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from provenance.cli import run
from provenance.compare import compare
from provenance.errors import CheckpointError, LimitExceeded, MalformedCheckpoint, PickleCheckpointRefused, UnsupportedCheckpoint
from provenance.formats import PeftAdapterCheckpoint, open_checkpoint
from tests.conftest import save_tiny_model
from tests.support.peft_models import save_adapter

Q0 = "base_model.model.model.layers.0.self_attn.q_proj"
K0 = "base_model.model.model.layers.0.self_attn.k_proj"


@pytest.fixture(scope="module")
def adapter(hf_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_adapter(hf_llama, tmp_path_factory.mktemp("peft") / "adapter", seed=1, r=4, alpha=16.0,
                        rank_pattern={"down_proj": 2})


def test_a_peft_folder_reads_back(adapter: Path, hf_llama: Path) -> None:
    with open_checkpoint(adapter) as ckpt:
        assert isinstance(ckpt, PeftAdapterCheckpoint) and ckpt.format == "peft-adapter"
        config = ckpt.adapter_config
        assert (config.peft_type, config.r, config.lora_alpha) == ("LORA", 4, 16.0)
        assert set(config.target_modules) == {"q_proj", "k_proj", "v_proj", "down_proj"}
        assert config.base_model_name_or_path == str(hf_llama)
        ranks = {m.module: m.rank for m in ckpt.modules}
        assert ranks["model.layers.0.mlp.down_proj"] == 2 and ranks["model.layers.1.self_attn.q_proj"] == 4
        assert {m.scale for m in ckpt.modules} == {16.0 / 4, 16.0 / 2}
        q = next(m for m in ckpt.modules if m.module == "model.layers.0.self_attn.q_proj")
        assert q.shape == (64, 64) and q.kind == "linear"
        assert ckpt.metadata_claims["peft.base_model_name_or_path"] == str(hf_llama)
        assert len(ckpt.tensors) == 2 * len(ckpt.modules) == 16
    assert run(["inspect", str(adapter)]) == 0


def _copy(adapter: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(adapter, tmp_path / "adapter"))


def _config(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        document = json.loads((folder / "adapter_config.json").read_text())
        edit(document)
        (folder / "adapter_config.json").write_text(json.dumps(document, indent=2))
    return apply


def _tensors(edit: Callable[[dict[str, torch.Tensor]], object]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        tensors = load_file(folder / "adapter_model.safetensors")
        edit(tensors)
        save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    return apply


def _raw(text: bytes) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        (folder / "adapter_config.json").write_bytes(text)
    return apply


HOSTILE: dict[str, tuple[Callable[[Path], None], type[CheckpointError], str]] = {
    "r-string": (_config(lambda d: d.update(r="4")), MalformedCheckpoint, "r"),
    "r-zero": (_config(lambda d: d.update(r=0)), MalformedCheckpoint, "r"),
    "r-huge": (_config(lambda d: d.update(r=1 << 40)), MalformedCheckpoint, "r"),
    "r-wrong": (_config(lambda d: d.update(r=8)), MalformedCheckpoint, f"{K0}.lora_A.weight"),  # the first module
    "rank-pattern-wrong": (_config(lambda d: d.update(rank_pattern={"down_proj": 4})), MalformedCheckpoint,
                           "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"),
    "rank-pattern-type": (_config(lambda d: d.update(rank_pattern={"down_proj": "2"})), MalformedCheckpoint,
                          "rank_pattern.down_proj"),
    "rank-pattern-regex": (_config(lambda d: d.update(rank_pattern={"(a+)+$": 2})), UnsupportedCheckpoint,
                           "rank_pattern"),
    "alpha-string": (_config(lambda d: d.update(lora_alpha="16")), MalformedCheckpoint, "lora_alpha"),
    "targets-number": (_config(lambda d: d.update(target_modules=5)), MalformedCheckpoint, "target_modules"),
    "not-lora": (_config(lambda d: d.update(peft_type="IA3")), UnsupportedCheckpoint, "peft_type"),
    "dora": (_config(lambda d: d.update(use_dora=True)), UnsupportedCheckpoint, "use_dora"),
    "bias": (_config(lambda d: d.update(bias="all")), UnsupportedCheckpoint, "bias"),
    "not-object": (_raw(b"[1, 2]"), MalformedCheckpoint, "adapter_config"),
    "nan": (_raw(b'{"peft_type": "LORA", "r": 4, "lora_alpha": NaN}'), MalformedCheckpoint, "adapter_config"),
    "duplicate-key": (_raw(b'{"peft_type": "LORA", "r": 4, "r": 8}'), MalformedCheckpoint, "adapter_config"),
    "huge": (_raw(b'{"peft_type": "LORA", "r": 4, "x": "' + b"a" * (5 << 20) + b'"}'), LimitExceeded, "adapter_config"),
    "b-missing": (_tensors(lambda t: t.pop(f"{Q0}.lora_B.weight")), MalformedCheckpoint, f"{Q0}.lora_A.weight"),
    "ranks-disagree": (_tensors(lambda t: t.update({f"{Q0}.lora_B.weight": torch.zeros(64, 3)})), MalformedCheckpoint,
                       f"{Q0}.lora_B.weight"),
    "one-d": (_tensors(lambda t: t.update({f"{Q0}.lora_B.weight": torch.zeros(64)})), UnsupportedCheckpoint,
              f"{Q0}.lora_B.weight"),
    "int-factor": (_tensors(lambda t: t.update({f"{Q0}.lora_A.weight": torch.zeros(4, 64, dtype=torch.int32)})),
                   UnsupportedCheckpoint, f"{Q0}.lora_A.weight"),
    "stray-tensor": (_tensors(lambda t: t.update({"evil.payload": torch.zeros(2, 2)})), UnsupportedCheckpoint, "evil.payload"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_adapter_fails_with_one_line(case: str, adapter: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    damage, error, field = HOSTILE[case]
    folder = _copy(adapter, tmp_path)
    damage(folder)
    with pytest.raises(error) as caught:
        open_checkpoint(folder)
    assert caught.value.field == field and caught.value.offset is not None
    capsys.readouterr()
    assert run(["inspect", str(folder)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"field {field[:20]}" in lines[0]


def test_a_wrong_type_names_its_offset(adapter: Path, tmp_path: Path) -> None:
    folder = _copy(adapter, tmp_path)
    _config(lambda d: d.update(lora_alpha="sixteen"))(folder)
    raw = (folder / "adapter_config.json").read_bytes()
    with pytest.raises(MalformedCheckpoint) as caught:
        open_checkpoint(folder)
    assert raw[caught.value.offset:].startswith(b'"lora_alpha"')  # the schema names the key


def test_a_pickled_adapter_is_refused(adapter: Path, tmp_path: Path) -> None:
    folder = _copy(adapter, tmp_path)
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(PickleCheckpointRefused):
        open_checkpoint(folder)


@pytest.mark.parametrize("base", ["narrow", "missing-module"])
def test_factors_that_disagree_with_the_base(base: str, adapter: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """An adapter applied to a base it does not fit: one line naming the adapter's tensor."""
    if base == "narrow":
        other = save_tiny_model(tmp_path / "base", seed=1, hidden_size=32, intermediate_size=86)
    else:  # a one-layer base: the adapter's layer-1 modules have no weight to update
        other = save_tiny_model(tmp_path / "base", seed=1, num_hidden_layers=1)
    with pytest.raises(MalformedCheckpoint) as caught:
        compare(adapter, other, base=other)
    assert caught.value.field is not None and caught.value.field.startswith("base_model.model.")
    assert caught.value.path.endswith("adapter_model.safetensors") and caught.value.offset == 8
    capsys.readouterr()
    assert run(["compare", str(adapter), str(other), "--base", str(other)]) == 2
    assert len([line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]) == 1


def test_an_adapter_without_a_base_asks_for_one(adapter: Path, tmp_path: Path, hf_llama: Path) -> None:
    folder = _copy(adapter, tmp_path)
    _config(lambda d: d.update(base_model_name_or_path=str(tmp_path / "gone")))(folder)
    with pytest.raises(UnsupportedCheckpoint, match="give --base") as caught:
        compare(folder, hf_llama)
    assert caught.value.field == "adapter_config: base_model_name_or_path"


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "adapter_config.json"])
@pytest.mark.parametrize("link", ["relative-dotdot", "absolute"])
def test_adapter_files_that_escape_the_folder_are_refused(name: str, link: str, adapter: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A file of the adapter that is a symlink out of its folder (``../outside/...`` or an
    absolute path) is refused, never read: the same containment as every other model folder."""
    folder = _copy(adapter, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (folder / name).rename(outside / name)  # the real file, now outside the folder
    (folder / name).symlink_to(f"../outside/{name}" if link == "relative-dotdot" else outside / name)
    with pytest.raises(MalformedCheckpoint, match="resolves outside the model directory") as caught:
        open_checkpoint(folder)
    assert caught.value.field == name
    capsys.readouterr()
    assert run(["inspect", str(folder)]) == 2


def test_an_adapter_file_in_a_symlink_loop_is_an_error(adapter: Path, tmp_path: Path) -> None:
    folder = _copy(adapter, tmp_path)
    (folder / "adapter_config.json").unlink()
    (folder / "adapter_config.json").symlink_to("adapter_config.json")
    with pytest.raises(CheckpointError) as caught:
        open_checkpoint(folder)
    assert caught.value.path.endswith("adapter_config.json")


def test_an_hf_folder_keeps_an_adapter_config_validated_by_the_same_schema(hf_llama: Path, tmp_path: Path,
                                                                           adapter: Path) -> None:
    """A full model folder with an ``adapter_config.json`` beside its weights: the same fields and
    bounds as an adapter folder's (one schema), so a rank out of range is refused there too."""
    folder = Path(shutil.copytree(hf_llama, tmp_path / "merged"))
    config = json.loads((adapter / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with open_checkpoint(folder) as ckpt:
        assert ckpt.format == "hf-directory" and ckpt.metadata["adapter_config"]["r"] == 4
    (folder / "adapter_config.json").write_text(json.dumps({**config, "r": 1 << 40}))
    with pytest.raises(MalformedCheckpoint) as caught:
        open_checkpoint(folder)
    assert caught.value.field == "r" and caught.value.path.endswith("adapter_config.json")
