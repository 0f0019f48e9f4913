"""Row readers ask the kernel to read ahead only while a tensor is streamed in order, and only
inside that tensor: a sample of a few rows costs no extra I/O."""
from __future__ import annotations

import pytest

from provenance.formats import open_checkpoint
from provenance.formats.base import Checkpoint
from tests.compare.test_transformations import TINY


def test_read_ahead_follows_a_streamed_pass_and_stays_in_the_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[int, int]] = []
    real = Checkpoint.prefetch

    def spy(self: Checkpoint, path: str, offset: int, n_bytes: int) -> None:
        asked.append((offset, n_bytes))
        real(self, path, offset, n_bytes)

    monkeypatch.setattr(Checkpoint, "prefetch", spy)
    with open_checkpoint(TINY) as ckpt:
        name = max(ckpt.tensors, key=lambda n: ckpt.info(n).n_rows)
        info = ckpt.info(name)
        step = max(1, info.n_rows // 8)
        with ckpt.row_reader(name, step) as reader:
            reader.read(info.n_rows // 2, info.n_rows // 2 + 1)  # a sample: nothing ahead
            reader.read(0, step)  # the start of a pass: not yet known to be one
            assert asked == []
            for a in range(step, info.n_rows, step):
                reader.read(a, min(info.n_rows, a + step))
    assert asked, "a streamed pass asked for no read-ahead"
    assert all(info.offset + step * info.row_bytes <= o and o + n <= info.offset + info.n_bytes for o, n in asked)
    assert max(o + n for o, n in asked) == info.offset + info.n_bytes  # up to the tensor's end
