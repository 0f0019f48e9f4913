"""Model cards written by huggingface_hub (``ModelCard``) and PEFT, read as claims; hostile front
matter (anchor bombs, cycles, oversize, deep nesting, wrong types, Python tags) fails with one
line naming file, field and offset."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from provenance.cli import run
from provenance.errors import LimitExceeded, MalformedCheckpoint
from provenance.formats import open_checkpoint
from provenance.formats.model_card import MAX_FRONT_MATTER_BYTES, parse_model_card, read_model_card
from tests.support.peft_models import save_adapter


def hub_card(folder: Path, **fields: object) -> Path:
    """A card as huggingface_hub writes it (``ModelCard.from_template(ModelCardData(...)).save``)."""
    from huggingface_hub import ModelCard, ModelCardData

    ModelCard.from_template(ModelCardData(**fields)).save(folder / "README.md")
    return folder


def test_a_hub_card_reads_back(hf_llama: Path, tmp_path: Path) -> None:
    folder = hub_card(Path(shutil.copytree(hf_llama, tmp_path / "model")), base_model=["org/a", "org/b"],
                      base_model_relation="merge", license="apache-2.0", datasets=["org/data"])
    card = read_model_card(str(folder))
    assert card is not None and card.base_model == ("org/a", "org/b") and card.base_model_relation == "merge"
    assert card.license == "apache-2.0" and card.datasets == ("org/data",)
    with open_checkpoint(folder) as ckpt:
        claims = dict(ckpt.metadata_claims)
    assert claims["card.base_model"] == ["org/a", "org/b"] and claims["card.base_model_relation"] == "merge"
    assert claims["card.license"] == "apache-2.0" and claims["card.datasets"] == ["org/data"]


def test_peft_writes_the_base_into_its_card(hf_llama: Path, tmp_path: Path) -> None:
    adapter = save_adapter(hf_llama, tmp_path / "adapter", seed=1)
    with open_checkpoint(adapter) as ckpt:
        claims = dict(ckpt.metadata_claims)
    assert claims["card.base_model"] == str(hf_llama) == claims["peft.base_model_name_or_path"]


@pytest.mark.parametrize("text", [b"# no front matter\n", b"", b"---\n---\n# empty\n", b"text\n---\nbase_model: x\n---\n"])
def test_cards_without_claims(text: bytes) -> None:
    card = parse_model_card(text, "README.md")
    assert card is None or card.claims() == {}


def _bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines)


HOSTILE: dict[str, tuple[str | bytes, type[MalformedCheckpoint], str, bytes | None]] = {
    # name: (front matter, or the whole card as bytes), error, field, text at the reported offset
    "billion-laughs": (_bomb(), MalformedCheckpoint, "card: front matter", b"&a0"),
    "cycle": ("base_model: &x [*x]", MalformedCheckpoint, "card: front matter", b"&x"),
    "alias-only": ("x: 1\nbase_model: *missing", MalformedCheckpoint, "card: front matter", b"*missing"),
    "deep": ("base_model: " + "[" * 40 + "]" * 40, LimitExceeded, "card: front matter", None),
    "many-nodes": ("datasets: [" + ",".join(["x"] * 60_000) + "]", LimitExceeded, "card: front matter", None),
    "huge": ("license: " + "x" * (MAX_FRONT_MATTER_BYTES + 10), MalformedCheckpoint, "card: front matter", None),
    "unterminated": (b"---\nbase_model: x\n", MalformedCheckpoint, "card: front matter", None),
    "python-tag": ("base_model: !!python/object/apply:os.system ['true']", MalformedCheckpoint, "card: front matter", None),
    "int-key": ("1: x\nbase_model: y", MalformedCheckpoint, "card: front matter", None),
    "list-key": ("? [a, b]\n: c", MalformedCheckpoint, "card: front matter", None),
    "base-int": ("base_model: 5", MalformedCheckpoint, "card: base_model", b"base_model:"),
    "base-map": ("base_model: {a: b}", MalformedCheckpoint, "card: base_model", b"base_model:"),
    "relation-unknown": ("base_model: x\nbase_model_relation: finetuned", MalformedCheckpoint, "card: base_model_relation",
                         b"base_model_relation:"),
    "license-list": ("license: [mit]", MalformedCheckpoint, "card: license", b"license:"),
    "datasets-nested": ("datasets: [[a]]", MalformedCheckpoint, "card: datasets", b"datasets:"),
    "not-yaml": ("base_model: [unclosed", MalformedCheckpoint, "card: front matter", None),
    "not-mapping": ("- a\n- b", MalformedCheckpoint, "card: front matter", None),
    "not-utf8": (b"---\nbase_model: \xff\xfe\n---\n", MalformedCheckpoint, "card", None),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_front_matter_fails_with_one_line(case: str, hf_llama: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    body, error, field, at = HOSTILE[case]
    folder = Path(shutil.copytree(hf_llama, tmp_path / "model"))
    data = body if isinstance(body, bytes) else b"---\n" + body.encode() + b"\n---\n# card\n"
    (folder / "README.md").write_bytes(data)
    with pytest.raises(error) as caught:
        open_checkpoint(folder)
    assert caught.value.field == field and caught.value.offset is not None
    if at is not None:
        assert data[caught.value.offset:].startswith(at)
    capsys.readouterr()
    assert run(["inspect", str(folder)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "README.md" in lines[0] and "field card" in lines[0]
