"""provenance.synth: the shipped synth model pool and the code that builds it."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from provenance.errors import MalformedCheckpoint  # noqa: E402
from provenance.synth import (  # noqa: E402
    PRETRAIN_RECIPE,
    STORIES260K_SHAPE,
    SynthModelNotFound,
    llama2c_to_hf,
    load_llama2c,
    load_manifest,
    load_synth_model,
    load_synth_tokens,
    model_ids,
    synth_data_dir,
    synth_model_path,
    train_independent,
)
from provenance.synth.arch import rope_theta_of  # noqa: E402
from provenance.synth.llama2c import Llama2cModel  # noqa: E402
from provenance.synth.store import file_sha256, read_weights, stored_tensors, tensors_sha256  # noqa: E402
from provenance.synth.train import deterministic, with_recipe  # noqa: E402

STORIES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "stories260K" / "stories260K.bin"
GGUF = STORIES.parents[1] / "llamacpp-quant" / "stories260K-f32.gguf"
needs_stories = pytest.mark.skipif(not STORIES.is_file(), reason="../shared/data/stories260K not present")
needs_shipped = pytest.mark.skipif(not (synth_data_dir() / "manifest.json").is_file(),
                                   reason="data/synth not built (scripts/build_synth_models.py)")


@pytest.fixture(scope="module")
def manifest() -> dict:
    return load_manifest()


@pytest.fixture(scope="module")
def stories():
    return load_llama2c(STORIES)


def centered_corr(a: torch.Tensor, b: torch.Tensor) -> float:
    x = a.double().flatten() - a.double().mean()
    y = b.double().flatten() - b.double().mean()
    return float(x @ y / (x.norm() * y.norm()))


def mean_matrix_corr(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Centered correlation averaged over the 2-D tensors (norm gains left out: they are
    all near 1, the textbook way raw statistics mislead)."""
    return float(np.mean([centered_corr(a[k], b[k]) for k in a if a[k].dim() == 2]))


# --- shipped data --------------------------------------------------------------------------

@needs_shipped
def test_manifest_files_exist_and_hashes_match(manifest: dict) -> None:
    root = synth_data_dir()
    for name, info in manifest["corpora"].items():
        assert file_sha256(root / info["file"]) == info["sha256"], name
    ids = [m["id"] for m in manifest["models"]]
    assert len(ids) == len(set(ids))
    for rec in manifest["models"]:
        path = synth_model_path(rec["id"])
        assert path == root / rec["path"]
        assert sorted(p.name for p in path.iterdir()) == sorted(rec["files"])
        for fname, digest in rec["files"].items():
            assert file_sha256(path / fname) == digest, f"{rec['id']}/{fname}"
        assert tensors_sha256(read_weights(path)) == rec["weights_sha256"], rec["id"]
        assert rec["kind"] in {"independent", "converted", "finetune", "lora", "continued-pretraining"}
        assert rec["parent"] is None or rec["parent"] in ids
        assert (rec["parent"] is None) == (rec["kind"] in {"independent", "converted"})


@needs_shipped
def test_pool_is_large_enough_for_calibration(manifest: dict) -> None:
    independent = model_ids("independent")
    assert len(list(itertools.combinations(independent, 2))) >= 200
    seeds = [m["seed"] for m in manifest["models"] if m["kind"] == "independent"]
    data_seeds = [m["data_seed"] for m in manifest["models"] if m["kind"] == "independent"]
    assert len(set(seeds)) == len(seeds) and len(set(data_seeds)) == len(data_seeds)
    # Every independent model clearly learned something: well below the unigram entropy of
    # the corpus (5.54 nats); most are at or below a smoothed bigram model (~4.8).
    for m in manifest["models"]:
        if m["kind"] == "independent":
            assert m["eval_loss"] < 5.0, m


@needs_shipped
def test_shapes_match_stories260k(stories) -> None:
    reference = {k: v.shape for k, v in stored_tensors(llama2c_to_hf(stories), torch.float32).items()}
    for model_id in model_ids():
        weights = read_weights(synth_model_path(model_id))
        assert {k: v.shape for k, v in weights.items()} == reference, model_id
    config = load_synth_model("synth-s00").config
    for key, value in STORIES260K_SHAPE.items():
        assert getattr(config, key) == value


@needs_shipped
def test_derivatives_are_closer_to_parent_than_independent_models() -> None:
    weights = {i: read_weights(synth_model_path(i)) for i in model_ids()}
    manifest = load_manifest()
    independent = [m["id"] for m in manifest["models"] if m["kind"] == "independent"][:6]
    null = [mean_matrix_corr(weights[a], weights[b]) for a, b in itertools.combinations(independent, 2)]
    for rec in manifest["models"]:
        if rec["parent"] is None:
            continue
        child = mean_matrix_corr(weights[rec["id"]], weights[rec["parent"]])
        unrelated = [mean_matrix_corr(weights[rec["id"]], weights[i]) for i in independent
                     if i != rec["parent"]]
        assert child > max(null) and child > max(unrelated), (rec["id"], child, max(null), max(unrelated))


@needs_shipped
def test_lora_delta_is_low_rank(manifest: dict) -> None:
    for rec in manifest["models"]:
        if rec["kind"] != "lora":
            continue
        child, parent = read_weights(synth_model_path(rec["id"])), read_weights(synth_model_path(rec["parent"]))
        name = "model.layers.2.self_attn.q_proj.weight"
        s = torch.linalg.svdvals(child[name].double() - parent[name].double())
        # rank 4 up to float16 storage noise
        assert float(s[:4].square().sum() / s.square().sum()) > 0.99, rec["id"]
        untouched = "model.layers.2.self_attn.k_proj.weight"
        assert torch.equal(child[untouched], parent[untouched])


@needs_shipped
def test_continued_pretraining_changes_rope(manifest: dict) -> None:
    for rec in manifest["models"]:
        if rec["kind"] == "continued-pretraining":
            config = load_synth_model(rec["id"]).config
            assert rope_theta_of(config) == 100000.0 and config.max_position_embeddings == 2048


@needs_shipped
def test_corpus_is_the_teachers_distribution(stories) -> None:
    rows = load_synth_tokens("corpus")
    assert rows.dtype == np.uint16 and rows.shape[1] == 512 and (rows[:, 0] == 1).all()
    teacher = Llama2cModel(stories)
    x = torch.from_numpy(rows[-4:].astype(np.int64))
    shuffled = x.flatten()[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))].view_as(x)

    def loss(t: torch.Tensor) -> float:
        with torch.no_grad():
            logits = teacher(t[:, :-1])
        return float(torch.nn.functional.cross_entropy(logits.reshape(-1, 512), t[:, 1:].reshape(-1)))

    assert loss(x) < 3.2 and loss(shuffled) > 9.0


def test_model_path_rejects_bad_ids(tmp_path: Path) -> None:
    for bad in ["../etc", "a/b", "", "X" * 70, "synth-s00/../../x"]:
        with pytest.raises(SynthModelNotFound):
            synth_model_path(bad, root=tmp_path)
    with pytest.raises(SynthModelNotFound):
        synth_model_path("synth-s99", root=tmp_path)


# --- llama2.c -> HF ------------------------------------------------------------------------

@needs_stories
def test_conversion_reproduces_llama2c_logits(stories) -> None:
    hf = llama2c_to_hf(stories)
    tokens = torch.randint(0, 512, (2, 200), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = 1
    ref = Llama2cModel(stories)
    with torch.no_grad():
        ref32, got32 = ref(tokens), hf(tokens).logits
        ref64, got64 = ref.double()(tokens), hf.double()(tokens).logits
    scale = float(ref64.abs().max())  # ~20
    # float32: within float32 accumulation noise (measured max 1.0e-4, i.e. 5e-6 relative).
    assert (ref32 - got32).abs().max() < 1e-5 * scale
    # float64: HF's RMSNorm computes in float32 whatever the dtype, which bounds the
    # agreement (measured 2.7e-5); a wrong q/k permutation is off by more than 1e-2.
    assert (ref64 - got64).abs().max() < 2e-6 * scale
    # Without undoing the q/k permutation the logits are far off (the test has teeth).
    from provenance.synth.convert import _qk_to_hf
    broken = llama2c_to_hf(stories).double()
    with torch.no_grad():
        for i, layer in enumerate(broken.model.layers):
            layer.self_attn.q_proj.weight.copy_(stories.tensors["wq"][i])
        assert (broken(tokens).logits - ref64).abs().max() > 1e-2
    assert _qk_to_hf(stories.tensors["wq"][0], 8).shape == (64, 64)


@needs_stories
def test_kv_cache_matches_full_forward(stories) -> None:
    model = Llama2cModel(stories)
    tokens = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(1))
    cache = model.new_cache(2, 40)
    with torch.no_grad():
        full = model(tokens)
        parts = torch.cat([model(tokens[:, :25], 0, cache), model(tokens[:, 25:26], 25, cache),
                           model(tokens[:, 26:], 26, cache)], dim=1)
    assert torch.allclose(full, parts, atol=1e-4)


@needs_stories
@pytest.mark.skipif(not GGUF.is_file(), reason="stories260K GGUF not present")
def test_loader_agrees_with_llamacpp_conversion(stories) -> None:
    """llama.cpp's own converter sliced the same file into the same tensors."""
    from gguf import GGUFReader

    gguf = {t.name: np.array(t.data) for t in GGUFReader(GGUF).tensors}
    names = {"attn_q": "wq", "attn_k": "wk", "attn_v": "wv", "attn_output": "wo", "ffn_gate": "w1",
             "ffn_down": "w2", "ffn_up": "w3", "attn_norm": "attention_norm", "ffn_norm": "ffn_norm"}
    t = stories.tensors
    assert np.array_equal(gguf["token_embd.weight"], t["tok_embeddings"].numpy())
    for i in range(5):
        for g, ours in names.items():
            assert np.array_equal(gguf[f"blk.{i}.{g}.weight"].reshape(t[ours][i].shape), t[ours][i].numpy())


@needs_stories
def test_llama2c_loader_is_strict(stories, tmp_path: Path) -> None:
    raw = STORIES.read_bytes()
    cases = {
        "truncated": raw[:-4],
        "trailing": raw + b"\0\0\0\0",
        "header-only": raw[:28],
        "short": raw[:10],
        "zero-dim": b"\0\0\0\0" + raw[4:],
        "huge-layers": raw[:8] + (10**9).to_bytes(4, "little") + raw[12:],
        "odd-heads": raw[:12] + (3).to_bytes(4, "little") + raw[16:],
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(data)
        with pytest.raises(MalformedCheckpoint):
            load_llama2c(path)
    from provenance.formats.llama2c_reader import expected_size

    assert expected_size(tuple(int.from_bytes(raw[i:i + 4], 'little', signed=True) for i in range(0, 28, 4))) == len(raw)


# --- training ------------------------------------------------------------------------------

def test_training_is_deterministic() -> None:
    rows = np.random.default_rng(0).integers(0, 512, size=(8, 512), dtype=np.uint16)
    rows[:, 0] = 1
    tiny = with_recipe(PRETRAIN_RECIPE, steps=3, batch_size=2, seq_len=32)

    def weights(seed: int, data_seed: int | None = None) -> dict[str, torch.Tensor]:
        return stored_tensors(train_independent(seed, rows, tiny, data_seed=data_seed), torch.float32)

    a, b = weights(3), weights(3)
    assert tensors_sha256(a) == tensors_sha256(b)
    assert tensors_sha256(a) != tensors_sha256(weights(4))
    assert tensors_sha256(a) != tensors_sha256(weights(3, data_seed=12345))  # data order alone
    # The caller's global torch settings are restored afterwards.
    before = torch.get_num_threads()
    with deterministic():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@needs_shipped
def test_shipped_model_loads_and_predicts_corpus() -> None:
    model = load_synth_model("synth-s00")
    assert model.dtype == torch.float32
    rows = load_synth_tokens("corpus")[-2:]
    x = torch.from_numpy(rows.astype(np.int64))
    with torch.no_grad():
        logits = model(x[:, :-1]).logits
    loss = float(torch.nn.functional.cross_entropy(logits.reshape(-1, 512), x[:, 1:].reshape(-1)))
    assert loss < 5.0  # unigram entropy of the corpus is ~5.5 nats

