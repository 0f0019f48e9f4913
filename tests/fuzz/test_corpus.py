"""Every seed of the fuzz corpus, and every crash reproducer kept beside it, through its target's
full read path: only ``ok`` or a clean refusal, never another exception (the regression test of
every input the fuzzer ever flagged, and a check that the seeds still reach deep)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.fuzz.targets import CORPUS, TARGETS, Runner, Target

SEEDS = sorted((target, path) for target in TARGETS for path in (CORPUS / target).glob("*"))
CRASHES = Path(__file__).resolve().parent / "crashes"
REPRODUCERS = sorted((target, path) for target in TARGETS for path in (CRASHES / target).glob("*"))
"""Inputs a fuzzer once crashed on, kept as found (``tests/fuzz/crashes/<target>/``)."""


@pytest.fixture(scope="module")
def runners() -> dict[str, Runner]:
    made = {name: Runner(target) for name, target in TARGETS.items()}
    yield made
    for runner in made.values():
        runner.close()


def test_every_target_has_seeds() -> None:
    assert {target for target, _ in SEEDS} == set(TARGETS)


@pytest.mark.parametrize(("target", "path"), SEEDS, ids=[f"{t}/{p.name}" for t, p in SEEDS])
def test_seed_reads_cleanly(target: str, path: Path, runners: dict[str, Runner]) -> None:
    outcome = runners[target].run(path.read_bytes())
    # Seeds are valid inputs, written by the real writers; the pickle target's are refused by design.
    assert outcome == ("refused" if target == "pickle" else "ok")


@pytest.mark.parametrize(("target", "path"), REPRODUCERS, ids=[f"{t}/{p.name}" for t, p in REPRODUCERS])
def test_crash_reproducer_is_now_clean(target: str, path: Path, runners: dict[str, Runner]) -> None:
    assert runners[target].run(path.read_bytes()) in ("ok", "refused")


def test_each_run_sees_only_its_input_and_the_companions(tmp_path: Path) -> None:
    """The harness rewrites an input's files in place (no unlink and create per execution) yet
    leaves nothing of the previous input: a split GGUF's second part shrinks to what the next
    input holds, and a file the next input does not name is removed."""
    split = Runner(TARGETS["gguf-split"], root=str(tmp_path))
    seed = next((CORPUS / "gguf-split").glob("*")).read_bytes()
    assert split.run(seed) == "ok"
    assert split.run(b"\x00\x00\x00\x00GGUF") == "refused"
    first, second = (split.directory / name for name in ("model-00001-of-00002.gguf", "model-00002-of-00002.gguf"))
    assert (first.read_bytes(), second.read_bytes()) == (b"", b"GGUF")
    split.close()

    named = Target("named", lambda data: {data.decode(): b"{}"}, None, TARGETS["config"].companions)
    runner = Runner(named, root=str(tmp_path))
    companions = {p.name: p.read_bytes() for p in runner.directory.iterdir()}
    runner.run(b"a.json")
    runner.run(b"b.json")
    assert {p.name for p in runner.directory.iterdir()} == set(companions) | {"b.json"}
    assert all((runner.directory / name).read_bytes() == data for name, data in companions.items())
    with pytest.raises(ValueError, match="companion"):
        runner.run(b"model.safetensors")
    runner.close()


def test_the_tokenizer_model_timeout_of_the_long_campaign_is_cheap(runners: dict[str, Runner]) -> None:
    """The 2026-12-05 campaign stopped on this 64 KiB input: libFuzzer's wall-clock timeout (then
    5 s) at ``nice 19`` on a loaded 2-core machine. It is no hang: refused (``pieces[4573]``'s length
    runs past the end) after one walk of the pieces, in milliseconds of CPU (0.06 s instrumented)."""
    data = (CRASHES / "tokenizer-model" / "timeout-32974f7fc4b4549a25013c29c8d54926b054734b").read_bytes()
    start = time.process_time()
    assert runners["tokenizer-model"].run(data) == "refused"
    assert time.process_time() - start < 1.0


def test_an_input_over_the_cpu_limit_is_a_crash() -> None:
    """The campaign's hang detector counts CPU, not wall time (``tests/fuzz/run.py``)."""
    from tests.fuzz.run import SlowInput, cpu_bounded

    def burn(data: bytes) -> str:
        start = time.process_time()
        while time.process_time() - start < 0.05:
            pass
        return "ok"

    assert cpu_bounded(burn, 1.0)(b"") == "ok"
    with pytest.raises(SlowInput, match="of CPU on one input"):
        cpu_bounded(burn, 0.01)(b"")
