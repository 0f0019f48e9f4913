"""Watermarks on real files: keys, embed, detection after quantization, tracing, analysis."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from provenance.formats import open_checkpoint
from provenance.watermark import DerivedKey, FileKey, ScoreOptions, TraceOptions, embed_checkpoint, gaussian_stream, key_seed, trace
from provenance.watermark.analyze import analyze_checkpoint
from provenance.watermark.attacks import (
    llama_cpp_available,
    permute_rescale,
    quantize_mix,
    quantize_with_llama_cpp,
    read_tensors,
    same_bytes,
    write_gguf_variant,
)
from provenance.watermark.keys import WatermarkKeyError, export_key_file, read_secret
from provenance.watermark.stats import family_bound, holm
from tests.conftest import QUANT_DIR, save_tiny_model

SOURCE = QUANT_DIR / "tiny-llama-f16.gguf"  # real llama.cpp-layout GGUF, 1.70M weights in block matrices
SECRET = b"provenance-test-secret-0001"
INNOCENT = [DerivedKey(SECRET, f"innocent-{i:02d}") for i in range(12)]
FULL = TraceOptions(sequential=False)
"""Every block read: the whole-model z of each statistic (sequential tracing stops early)."""


def _block_names(tensors: dict[str, np.ndarray]) -> list[str]:
    return [n for n in tensors if n.startswith("blk.") and "norm" not in n]


@pytest.fixture(scope="module")
def marked(tmp_path_factory: pytest.TempPathFactory) -> dict[float, Path]:
    out = {}
    for amplitude in (1e-2, 1e-3):
        path = tmp_path_factory.mktemp("wm") / f"acme-{amplitude:g}.gguf"
        embed_checkpoint(SOURCE, path, DerivedKey(SECRET, "acme"), amplitude)
        out[amplitude] = path
    return out


def _z(result, label: str) -> dict[str, float]:
    key = next(k for k in result.score.keys if k.label == label)
    return {s: acc.z for s, acc in key.totals.items() if acc.q > 0}


def _assert_null(result, min_ks_p: float = 1e-3) -> None:
    """Decoys and innocent clients look like N(0,1), and nobody innocent is accused."""
    for stat, summary in result.score.decoy_summary().items():
        assert summary.n >= 1000
        assert abs(summary.mean) < 0.15 and 0.85 < summary.std < 1.15, (stat, summary)
        assert summary.ks_p > min_ks_p, (stat, summary)
        assert summary.max < 5.5
    for key in INNOCENT:
        assert key.label not in result.accused
        assert all(abs(z) < 5.5 for z in _z(result, key.label).values())


# ----- keys ------------------------------------------------------------------------------
def test_key_derivation_is_pinned() -> None:
    # The documented derivation, recomputed here from its specification.
    def lp(b: bytes) -> bytes:
        return len(b).to_bytes(8, "little") + b

    expected = hashlib.sha256(b"provenance-wm-v2" + lp(SECRET) + lp(b"client-42") + lp(b"blk.0.attn_q.weight")).digest()
    seed = key_seed(SECRET, "client-42", "blk.0.attn_q.weight")
    assert seed == expected
    # Test vector of format v2: every operation is IEEE float32 or integer arithmetic, so
    # the values are exact on every machine (a change here invalidates every issued key).
    np.testing.assert_array_equal(gaussian_stream(seed, 0, 6), np.array([
        1.348850965499878, 1.5406951904296875, -0.8864785432815552, 1.6896660327911377, 0.8044427633285522, -1.547492265701294,
    ], dtype=np.float32))
    np.testing.assert_array_equal(gaussian_stream(seed, 1_000_001, 3),
                                  np.array([-1.3154428005218506, 0.1043868288397789, -0.07336077839136124], dtype=np.float32))


def test_philox_known_answers_and_the_numpy_transcription() -> None:
    """Random123's published Philox4x32-10 vectors, and the compiled generator equal bit for
    bit to a plain numpy transcription of docs/watermark.md's specification."""
    from provenance.watermark.keygen import fill_gaussian
    from tests.support.keygen_reference import gaussian_reference, philox4x32_10

    kat = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
           ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
           ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for counter, key, want in kat:
        assert tuple(int(x) for x in philox4x32_10(np.array([counter], dtype=np.uint64), key)[0]) == want
    words = np.frombuffer(key_seed(SECRET, "client-42", "blk.3.ffn_up.weight")[:16], dtype="<u4").astype(np.uint32)
    for start, count in [(0, 300_001), (7, 5), ((1 << 32) * 4 - 3, 11)]:  # the last crosses the counter's 32-bit word
        out = np.empty(count, dtype=np.float32)
        fill_gaussian(words, start, out)
        np.testing.assert_array_equal(out, gaussian_reference(tuple(int(w) for w in words), start, count))


def test_fused_key_dots_equal_generated_keys() -> None:
    key = DerivedKey(SECRET, "acme")
    ys = np.random.default_rng(0).standard_normal((3, 64 * 5000)).astype(np.float32)
    k = key.rows("blk.0.ffn_up.weight", (10_000, 64), 17, 17 + 5000).reshape(-1).astype(np.float64)
    for lo, hi in [(0, ys.shape[1]), (64 * 7 + 3, 64 * 4000 + 1)]:
        out = np.zeros(3)
        key.dots("blk.0.ffn_up.weight", (10_000, 64), 17 * 64, ys, lo, hi, out)
        # float32 products summed in the kernel's lane order (which the CPU's vector width
        # decides): the error scales with the sum of |terms|, not with the (cancelling) result;
        # a wrong or shifted key is off by ~sqrt(n) ~ 500, a million times this bound
        bound = 1e-6 * (np.abs(ys[:, lo:hi]).astype(np.float64) @ np.abs(k[lo:hi]))
        assert np.all(np.abs(out - ys[:, lo:hi].astype(np.float64) @ k[lo:hi]) < bound)
        file_key = FileKey({"blk.0.ffn_up.weight": key.rows("blk.0.ffn_up.weight", (10_000, 64), 0, 10_000)}, "file")
        again = np.zeros(3)
        file_key.dots("blk.0.ffn_up.weight", (10_000, 64), 17 * 64, ys, lo, hi, again)
        assert np.all(np.abs(again - out) < bound)


def test_key_stream_random_access_and_gaussianity() -> None:
    seed = key_seed(SECRET, "x", "t")
    whole = gaussian_stream(seed, 0, 200_003)
    for start, count in [(0, 1), (1, 2), (3, 5), (4, 4), (99_999, 7), (200_000, 3)]:
        assert np.array_equal(gaussian_stream(seed, start, count), whole[start : start + count])
    assert abs(whole.mean()) < 0.01 and abs(whole.std() - 1) < 0.01
    assert sps.kstest(whole, "norm").pvalue > 1e-3
    assert abs(sps.kurtosis(whole)) < 0.05  # Gaussian, not +-1 (excess kurtosis -2)
    assert np.abs(whole).max() < 5.78  # the documented truncation: |g| <= sqrt(48 ln 2)
    big = gaussian_stream(seed, 0, 4_000_000).astype(np.float64)
    for q in (0.5, 0.9, 0.99, 0.999, 0.9999):  # tails as a Gaussian's (binomial error ~ 4 sd)
        expected = 2 * sps.norm.sf(sps.norm.isf((1 - q) / 2))
        observed = float(np.mean(np.abs(big) > sps.norm.isf((1 - q) / 2)))
        assert abs(observed - expected) < 4 * np.sqrt(expected * (1 - expected) / big.size) + 1e-6, q
    other = gaussian_stream(key_seed(SECRET, "y", "t"), 0, 200_003)
    assert abs(np.corrcoef(whole, other)[0, 1]) < 0.01


def test_secret_too_short_is_refused(tmp_path: Path) -> None:
    (tmp_path / "s").write_bytes(b"short\n")
    with pytest.raises(WatermarkKeyError):
        read_secret(tmp_path / "s")


# ----- embed -----------------------------------------------------------------------------
def test_embed_gguf_keeps_everything_but_the_mark(marked: dict[float, Path]) -> None:
    with open_checkpoint(SOURCE) as src, open_checkpoint(marked[1e-2]) as out:
        assert list(src.tensors) == list(out.tensors)
        assert src.metadata.keys() == out.metadata.keys()
        assert all(src.metadata[k] == out.metadata[k] for k in src.metadata)
        for name, info in src.tensors.items():
            assert out.info(name).dtype == info.dtype and out.info(name).shape == info.shape
            same = src.tensor_sha256(name) == out.tensor_sha256(name)
            assert same == (not name.startswith("blk.") or "norm" in name), name
        w, x = src.read_rows("blk.1.ffn_down.weight").astype(np.float64), out.read_rows("blk.1.ffn_down.weight")
        delta = (x - w) / w.std(axis=1, keepdims=True)
        key = DerivedKey(SECRET, "acme").rows("blk.1.ffn_down.weight", w.shape, 0, w.shape[0])
        assert 0.009 < delta.std() < 0.011  # amplitude 1e-2 of each row's sigma (after f16 rounding)
        assert np.corrcoef(delta.ravel(), key.ravel())[0, 1] > 0.95


def test_embed_in_many_chunks_equals_the_whole_tensor_mark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With chunks of a few rows, every tensor goes through the read-ahead / mark-ahead
    pipeline many times (alternating input and output buffers): each stored row must be the
    whole tensor's ``mark_into`` rounded to f16, and the report the one-chunk run's, bit for bit."""
    import torch

    from provenance.formats import write
    from provenance.watermark.embed import mark_into

    key = DerivedKey(SECRET, "acme")
    whole = embed_checkpoint(SOURCE, tmp_path / "whole.gguf", key, 1e-3)
    monkeypatch.setattr(write, "CHUNK_WEIGHTS", 1024)
    report = embed_checkpoint(SOURCE, tmp_path / "chunked.gguf", key, 1e-3)
    assert same_bytes(tmp_path / "whole.gguf", tmp_path / "chunked.gguf")
    assert [(t.name, t.n) for t in report.tensors] == [(t.name, t.n) for t in whole.tensors]
    # each row's terms are summed in row order: the report does not depend on the chunks
    assert [(t.rel_change, t.q8_ratio) for t in report.tensors] == [(t.rel_change, t.q8_ratio) for t in whole.tensors]
    with open_checkpoint(SOURCE) as src, open_checkpoint(tmp_path / "chunked.gguf") as out:
        for change in report.tensors:
            info = src.info(change.name)
            assert info.n_rows * info.row_length > 4 * 1024  # several chunks
            w = torch.from_numpy(src.read_rows(change.name))
            expected = torch.empty_like(w)
            mark_into(w, change.name, (info.n_rows, info.row_length), 0, key, 1e-3, expected)
            assert torch.equal(expected.half().float(), torch.from_numpy(out.read_rows(change.name))), change.name


def test_embed_f32_gguf_keeps_f32(tmp_path: Path) -> None:
    out = tmp_path / "f32.gguf"
    report = embed_checkpoint(QUANT_DIR / "tiny-llama-f32.gguf", out, DerivedKey(SECRET, "acme"), 1e-3)
    assert 0.00095 < report.summary()["rel_change_rms"] < 0.00105  # no f16 rounding in the way
    with open_checkpoint(out) as ckpt:
        assert {i.dtype for i in ckpt.tensors.values()} == {"F32"}
    result = trace(out, [DerivedKey(SECRET, "acme")], QUANT_DIR / "tiny-llama-f32.gguf", options=TraceOptions(decoys=0))
    assert result.accused == ("acme",) and result.score.weights_read < result.score.n_weights  # decided early


def test_embed_hf_directory_roundtrip(tmp_path: Path) -> None:
    """HF directory in, full HF directory out; q/k marked in canonical layout and written back in HF's."""
    from transformers import LlamaForCausalLM

    src = save_tiny_model(tmp_path / "hf", seed=5)
    (src / "tokenizer_config.json").write_text("{}")
    out = tmp_path / "marked"
    report = embed_checkpoint(src, out, DerivedKey(SECRET, "acme"), 1e-2)
    assert (out / "config.json").read_bytes() == (src / "config.json").read_bytes()
    assert (out / "tokenizer_config.json").is_file()
    LlamaForCausalLM.from_pretrained(out)  # transformers loads it
    # 2 layers x (q 64x64, k and v 32x64 (4 kv heads), o 64x64, gate/up/down 64x172)
    assert report.summary()["n_marked"] == 2 * (2 * 64 * 64 + 2 * 32 * 64 + 3 * 64 * 172)
    result = trace(out, [DerivedKey(SECRET, "acme"), *INNOCENT], src, options=TraceOptions(decoys=1000, sequential=False))
    key = next(k for k in result.score.keys if k.label == "acme")
    for name in ("blk.0.attn_q.weight", "blk.1.attn_k.weight", "blk.0.ffn_up.weight"):
        assert key.per_tensor[name]["reference"].z > 30, name  # would be ~0 if q/k rows were scrambled
    assert result.accused == ("acme",)
    _assert_null(result)


# ----- detect ----------------------------------------------------------------------------
def test_detect_with_reference_and_blind(marked: dict[float, Path]) -> None:
    strong = trace(marked[1e-2], [DerivedKey(SECRET, "acme"), *INNOCENT], SOURCE, FULL)
    z = _z(strong, "acme")
    assert z["reference"] > 100
    assert 8 < z["blind"] < 18  # a * sqrt(N) = 13.0 at N = 1.70M
    assert strong.accused == ("acme",)
    _assert_null(strong)
    weak = trace(marked[1e-3], [DerivedKey(SECRET, "acme"), *INNOCENT], SOURCE, FULL)
    assert _z(weak, "acme")["reference"] > 100
    assert abs(_z(weak, "acme")["blind"]) < 5  # a * sqrt(N) = 1.3: too few weights for blind at 1e-3
    _assert_null(weak)


def test_q8_0_grid_statistic(marked: dict[float, Path], tmp_path: Path) -> None:
    """gguf-py's Q8_0 quantizer (bit-exact with llama.cpp's) on a 1e-3 mark: the grid flips find it."""
    tensors = read_tensors(marked[1e-3])
    q8 = tmp_path / "acme-q8.gguf"
    write_gguf_variant(marked[1e-3], q8, {n: tensors[n] for n in _block_names(tensors)}, qtype="Q8_0")
    result = trace(q8, [DerivedKey(SECRET, "acme"), *INNOCENT], SOURCE, FULL)
    z = _z(result, "acme")
    assert z["grid"] > 150 and z["grid"] > z["reference"]
    assert result.score.n_flips > 10_000
    _assert_null(result)


@pytest.mark.parametrize("mix", ["Q4_K_M", "Q2_K"])
def test_detect_after_k_quants(marked: dict[float, Path], tmp_path: Path, mix: str) -> None:
    """The project's llama.cpp-exact Q4_K_M / Q2_K of a 1e-3 mark (blind z would be 1.3):
    the grid statistic accuses at z >= 7 (measured 84 / 45) and beats the plain residual."""
    out = tmp_path / f"acme-{mix}.gguf"
    quantize_mix(marked[1e-3], out, mix)
    with open_checkpoint(out) as ckpt:
        assert {"Q4_K": "Q4_K_M", "Q2_K": "Q2_K"}[ckpt.info("blk.0.attn_q.weight").dtype] == mix
    result = trace(out, [DerivedKey(SECRET, "acme"), *INNOCENT], SOURCE, FULL)
    z = _z(result, "acme")
    assert z["grid"] > 30 and z["grid"] > 2 * z["reference"]
    assert result.accused == ("acme",)
    _assert_null(result)


@pytest.mark.skipif(
    not llama_cpp_available(), reason="llama-cpp-python not built into .cache/llamacpp (see docs/watermark.md)"
)
def test_project_quantizer_writes_what_llama_cpp_writes(marked: dict[float, Path], tmp_path: Path) -> None:
    for mix in ("Q4_K_M", "Q3_K_M"):
        quantize_mix(marked[1e-3], tmp_path / "ours.gguf", mix)
        quantize_with_llama_cpp(marked[1e-3], tmp_path / "theirs.gguf", mix)
        assert same_bytes(tmp_path / "ours.gguf", tmp_path / "theirs.gguf"), mix


def test_independent_decoys_agree(marked: dict[float, Path]) -> None:
    names = ["blk.0.attn_q.weight", "blk.0.attn_v.weight"]
    from provenance.watermark.select import names_selector

    result = trace(
        marked[1e-3],
        [DerivedKey(SECRET, "acme")],
        SOURCE,
        options=TraceOptions(decoys=1000, independent_decoys=True, selector=names_selector(names)),
    )
    for summary in result.score.decoy_summary().values():
        assert summary.n == 1000 and summary.ks_p > 1e-3 and abs(summary.std - 1) < 0.15


def test_permutation_and_rescale_need_realignment(marked: dict[float, Path], tmp_path: Path) -> None:
    tensors = read_tensors(marked[1e-3])
    moved = permute_rescale(tensors, layers=[0, 1], seed=3)
    path = tmp_path / "perm.gguf"
    write_gguf_variant(marked[1e-3], path, {n: moved[n] for n in _block_names(tensors)})
    keys = [DerivedKey(SECRET, "acme"), *INNOCENT]
    plain = trace(path, keys, SOURCE, options=TraceOptions(realign="never", sequential=False))
    aligned = trace(path, keys, SOURCE, options=TraceOptions(realign="auto", sequential=False))
    ffn = "blk.1.ffn_down.weight"
    assert abs(next(k for k in plain.score.keys if k.label == "acme").per_tensor[ffn]["reference"].z) < 5
    assert next(k for k in aligned.score.keys if k.label == "acme").per_tensor[ffn]["reference"].z > 50
    assert aligned.accused == ("acme",)
    _assert_null(aligned)


@pytest.mark.parametrize("log_scale", [0.5, 0.02])
def test_realignment_undoes_large_and_small_rescales(marked: dict[float, Path], tmp_path: Path, log_scale: float) -> None:
    """A rescale far below lineage's spread threshold would still drown a 1e-3 mark: the
    watermark takes every unit scale that stands out of its fit's noise."""
    from provenance.watermark import score_checkpoint

    tensors = read_tensors(marked[1e-3])
    path = tmp_path / "moved.gguf"
    moved = permute_rescale(tensors, layers=[0, 1], seed=5, log_scale=log_scale)
    write_gguf_variant(marked[1e-3], path, {n: moved[n] for n in _block_names(tensors)})
    key = [DerivedKey(SECRET, "acme")]
    copy = score_checkpoint(marked[1e-3], key, SOURCE, ScoreOptions(decoys=0)).keys[0].z("reference")
    result = score_checkpoint(path, key, SOURCE, ScoreOptions(decoys=0))
    assert sorted(result.realignment) == ["0", "1"]
    assert copy is not None and result.keys[0].z("reference") > 0.97 * copy


def test_key_file_with_hf_names(marked: dict[float, Path], tmp_path: Path) -> None:
    """An explicit key given by HF names (q/k in HF row order) detects the GGUF copy."""
    from provenance.names.qk_permute import gguf_to_hf_rows

    key = DerivedKey(SECRET, "acme")
    with open_checkpoint(marked[1e-3]) as ckpt:
        shapes = {
            n: (i.n_rows, i.row_length) for n, i in ckpt.tensors.items() if n.startswith("blk.") and "norm" not in n
        }
    gguf_npz = tmp_path / "k.npz"
    export_key_file(key, shapes, gguf_npz)
    hf = {}
    with np.load(gguf_npz) as npz:
        for name in npz.files:
            layer, role = name.split(".")[1], name.split(".")[2]
            hf_role = {
                "attn_q": "self_attn.q_proj",
                "attn_k": "self_attn.k_proj",
                "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj",
                "ffn_gate": "mlp.gate_proj",
                "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj",
            }[role]
            value = npz[name]
            if role in ("attn_q", "attn_k"):
                value = gguf_to_hf_rows(value, 4)
            hf[f"model.layers.{layer}.{hf_role}.weight"] = value
    hf_npz = tmp_path / "k_hf.npz"
    np.savez(hf_npz, **hf)
    with open_checkpoint(marked[1e-3]) as ckpt:
        arch = ckpt.architecture
    for path in (gguf_npz, hf_npz):
        result = trace(marked[1e-3], [FileKey.load(path, arch)], SOURCE, options=TraceOptions(decoys=0, sequential=False))
        assert result.score.keys[0].totals["reference"].z > 100, path


# ----- trace -----------------------------------------------------------------------------
def test_trace_midpoint_collusion_accuses_both_colluders(tmp_path: Path) -> None:
    from provenance.watermark.attacks import midpoint

    copies = []
    for client in ("acme", "globex"):
        path = tmp_path / f"{client}.gguf"
        embed_checkpoint(SOURCE, path, DerivedKey(SECRET, client), 1e-2)
        copies.append(read_tensors(path))
    mixed = midpoint([{n: c[n] for n in _block_names(c)} for c in copies])
    path = tmp_path / "mid.gguf"
    write_gguf_variant(SOURCE, path, mixed)
    keys = [DerivedKey(SECRET, "acme"), DerivedKey(SECRET, "globex"), *INNOCENT]
    result = trace(path, keys, SOURCE, FULL)
    assert sorted(result.accused) == ["acme", "globex"] and result.collusion
    blind_only = trace(path, keys, None, FULL)  # no reference: each mark at a/2, z ~ a*sqrt(N)/2 = 6.5
    assert all(3.5 < _z(blind_only, c)["blind"] < 10 for c in ("acme", "globex"))
    assert set(blind_only.accused) <= {"acme", "globex"}
    _assert_null(result)


def test_family_bound_and_holm() -> None:
    assert family_bound(3 * 10_000, 7.0) < 4e-8
    assert holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])


# ----- analyze ---------------------------------------------------------------------------
def test_analyze_classes(marked: dict[float, Path], tmp_path: Path) -> None:
    assert analyze_checkpoint(marked[1e-3], SOURCE).verdict == "iid-perturbation"
    assert analyze_checkpoint(SOURCE, SOURCE).verdict == "identical"
    # Real llama.cpp output against its real source: nothing but quantization.
    assert (
        analyze_checkpoint(QUANT_DIR / "tiny-llama-Q8_0.gguf", QUANT_DIR / "tiny-llama-f32.gguf").verdict
        == "exact-quantization"
    )
    assert (
        analyze_checkpoint(QUANT_DIR / "tiny-llama-Q4_K_M.gguf", QUANT_DIR / "tiny-llama-f32.gguf").verdict
        == "exact-quantization"
    )
    # A low-rank, fine-tune-like update of similar size.
    tensors = read_tensors(SOURCE)
    rng = np.random.default_rng(0)
    tuned = {}
    for n in _block_names(tensors):
        w = tensors[n]
        a, b = rng.normal(size=(w.shape[0], 4)), rng.normal(size=(4, w.shape[1]))
        tuned[n] = w + 0.05 * w.std() * (a @ b) / 2
    path = tmp_path / "tuned.gguf"
    write_gguf_variant(SOURCE, path, tuned)
    assert analyze_checkpoint(path, SOURCE).verdict == "structured"
    moved = permute_rescale(tensors, layers=[0, 1], seed=1)
    path = tmp_path / "moved.gguf"
    write_gguf_variant(SOURCE, path, {n: moved[n] for n in _block_names(tensors)})
    result = analyze_checkpoint(path, SOURCE)
    assert result.verdict == "rescale-permutation"
    assert result.residual_counts.get("iid-perturbation", 0) == 0  # unmarked: only storage rounding is left
    marked_tensors = read_tensors(marked[1e-2])
    moved = permute_rescale(marked_tensors, layers=[0, 1], seed=1)
    path = tmp_path / "marked-moved.gguf"
    write_gguf_variant(SOURCE, path, {n: moved[n] for n in _block_names(tensors)})
    result = analyze_checkpoint(path, SOURCE)
    assert result.verdict == "rescale-permutation" and result.residual_verdict == "iid-perturbation"


def test_trace_and_analysis_results_are_plain_data(marked: dict[float, Path]) -> None:
    import pickle  # noqa: TID251 - our own result objects, round-tripped to show they can be shipped

    traced = trace(marked[1e-2], [DerivedKey(SECRET, "acme"), *INNOCENT], SOURCE, options=TraceOptions(decoys=50))
    again = pickle.loads(pickle.dumps(traced))  # noqa: S301
    assert again.to_dict() == traced.to_dict() and again.accused == ("acme",)
    best = traced.clients()[0]
    assert best.key == "acme" and best.accused and best.best is not None and best.best[1].z > 100
    assert traced.rule.n_tests == len(traced.clients()) * len(traced.score.statistics)
    analysis = analyze_checkpoint(marked[1e-2], SOURCE)
    assert pickle.loads(pickle.dumps(analysis)).to_dict() == analysis.to_dict()  # noqa: S301
    assert analysis.changed and analysis.verdict == "iid-perturbation"


def test_radius_equals_the_transcription_for_every_input() -> None:
    """The generator's radius depends on ``r >> 9`` only: all 2**23 values, compiled (leading
    zero count for the exponent) against the numpy transcription (float64 log2), bit for bit."""
    import numba

    from provenance.watermark.keygen import _radius
    from tests.support.keygen_reference import _radius as radius_reference

    @numba.njit
    def radii(r: np.ndarray, out: np.ndarray) -> None:
        for i in range(r.shape[0]):
            out[i] = _radius(r[i])

    r = np.arange(1 << 23, dtype=np.uint64) << np.uint64(9)
    out = np.empty(r.shape[0], dtype=np.float32)
    radii(r, out)
    np.testing.assert_array_equal(out, radius_reference(r))
