"""The one-pass file + tensor hashing agrees with hashing each range separately."""
from __future__ import annotations

import hashlib

import pytest

from provenance.formats import open_checkpoint
from provenance.hashing import checkpoint_sha256s, file_sha256, tensor_sha256s
from tests.conftest import QUANT_DIR


@pytest.mark.parametrize("chunk_bytes", [1000, 4096, 1 << 20])
def test_one_pass_hashes_match_separate_hashes(chunk_bytes: int, hf_llama_sharded) -> None:
    for path in (QUANT_DIR / "tiny-llama-Q3_K_M.gguf", hf_llama_sharded):
        with open_checkpoint(path) as checkpoint:
            seen: list[int] = []
            files, tensors = checkpoint_sha256s(checkpoint, progress=seen.append, chunk_bytes=chunk_bytes)
            assert tensors == tensor_sha256s(checkpoint)
            assert files == {span.path: file_sha256(span.path) for span in checkpoint.files}
            assert sum(seen) == sum(span.size for span in checkpoint.files)
            name = next(iter(checkpoint.tensors))
            info = checkpoint.info(name)
            with open(info.file, "rb") as handle:
                handle.seek(info.offset)
                assert tensors[name] == hashlib.sha256(handle.read(info.n_bytes)).hexdigest()
