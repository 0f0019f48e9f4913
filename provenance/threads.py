"""Choose torch's intra-op thread count deliberately, for one block of work.

On a shared 2-core machine two spinning OpenMP threads were measured 16-75x slower than one
while another process held a core (DESIGN.md; 11 ms vs 440 ms for the refdb summaries,
18 ms vs 1 s for a quantcheck tensor), so the heavy paths pin a count and restore the
caller's afterwards.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (``None``: leave the setting alone)."""
    import torch

    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(previous)
