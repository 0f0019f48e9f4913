"""The known-change re-judgement of a finer candidate reads only the sampled rows of each side:
the same rows, and the same changed reference, as the whole tensors indexed afterwards
(real files; the attention rows of the Llama files go through the Q/K permutation)."""
from __future__ import annotations

import numpy as np
import pytest

from provenance.compare.api import _sample_rows
from provenance.compare.options import CompareOptions
from provenance.formats import open_checkpoint
from provenance.watermark.keys import derived_keys
from provenance.watermark.known_mark import _marked
from tests.conftest import QUANT_DIR


@pytest.mark.parametrize("file", ["stories260K-f32.gguf", "tiny-llama-f16.gguf"])
def test_sampled_rows_match_whole_tensor(file: str) -> None:
    key = derived_keys(b"s" * 32, ["acme"])[0]
    checked = 0
    with open_checkpoint(QUANT_DIR / file) as ck:
        for name, info in ck.tensors.items():
            if len(info.shape) < 2 or info.n_rows < 2:
                continue
            sample = _sample_rows(info, CompareOptions(sample_rows=7))
            whole = ck.read_rows(name)
            with ck.row_reader(name, len(sample)) as reader:
                gathered = reader.gather(sample).numpy()
            assert np.array_equal(gathered, whole[sample]), name
            changed_whole = _marked(ck, name, key, 1e-3, whole, np.arange(whole.shape[0]))
            assert np.array_equal(_marked(ck, name, key, 1e-3, gathered, sample), changed_whole[sample]), name
            checked += 1
    assert checked >= 10
