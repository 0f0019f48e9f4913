"""The scan on a real local Ray cluster: same table as the local executor, a worker killed in
the middle of the scan, a model that hangs.

Marked ``ray`` (``pytest -m "not ray"`` leaves them out). Where the ray package is missing or a
local Ray cannot start (no shared memory, a sandbox without sockets), they are skipped with the
reason; ``PROVENANCE_REQUIRE_RAY=1`` (CI) turns that skip into a failure."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from provenance.scan import Limits, RayExecutor, scan
from tests.conftest import ROOT
from tests.scan.conftest import Baseline, comparable
from tests.scan.faults import faulty_scan_task

LIMITS = Limits(seconds=300.0, memory_bytes=1 << 30)
START_SECONDS = 120.0
pytestmark = pytest.mark.ray


def _unavailable(reason: str) -> None:
    if os.environ.get("PROVENANCE_REQUIRE_RAY") == "1":
        pytest.fail(f"Ray is required here (PROVENANCE_REQUIRE_RAY=1): {reason}")
    pytest.skip(reason)


def start_local_ray() -> Any:
    """A two-CPU Ray on this machine, owned by this test process, once a worker has answered;
    skips (see the module doc) when it cannot start or answer within START_SECONDS."""
    try:
        import ray
    except ImportError:
        _unavailable("the ray package is not installed (pip install 'provenance[ray]')")
    if ray.is_initialized():
        ray.shutdown()
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning",
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # workers import tests.scan.faults by name
        ray.get(ray.remote(lambda: os.getpid()).remote(), timeout=START_SECONDS)
    except Exception as exc:  # any failure to start is the environment's, not the scan's
        ray.shutdown()
        _unavailable(f"a local Ray cannot start here: {type(exc).__name__}: {str(exc).strip()[:300]}")
    return ray


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """The local Ray's address for the module's tests (shut down at the end)."""
    ray = start_local_ray()
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


class _RayThatCannotStart:
    """Stands for the ray module where ``ray.init`` fails (as without /dev/shm or sockets)."""

    shut_down = False

    def is_initialized(self) -> bool:
        return False

    def init(self, **_: object) -> None:
        raise ConnectionError("raylet failed to start: no space left on /dev/shm")

    def shutdown(self) -> None:
        self.shut_down = True


def test_a_ray_that_cannot_start_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _RayThatCannotStart()
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.delenv("PROVENANCE_REQUIRE_RAY", raising=False)
    with pytest.raises(pytest.skip.Exception, match="cannot start here: ConnectionError: raylet failed"):
        start_local_ray()
    assert fake.shut_down
    monkeypatch.setenv("PROVENANCE_REQUIRE_RAY", "1")
    with pytest.raises(pytest.fail.Exception, match="required here"):
        start_local_ray()
    monkeypatch.setitem(sys.modules, "ray", None)  # not installed
    monkeypatch.delenv("PROVENANCE_REQUIRE_RAY")
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        start_local_ray()


def test_ray_table_equals_the_local_one_row_for_row(baseline: Baseline, ray_cluster: str, tmp_path: Path) -> None:
    report = scan(baseline.inputs, tmp_path / "out", baseline.options, RayExecutor(None, LIMITS))
    assert report.executor == "ray" and report.scanned == 50
    pd.testing.assert_frame_equal(comparable(tmp_path / "out"), baseline.table())
    workers = {r.row.worker for r in report.results if r.row.seconds > 0}
    assert workers and all(not w.endswith(f":{os.getpid()}") for w in workers)  # the driver scanned nothing


def test_a_killed_worker_and_a_hung_model_cost_one_row_each(baseline: Baseline, ray_cluster: str, tmp_path: Path) -> None:
    faults = tmp_path / "faults"
    faults.mkdir()
    for name in ("stall-a.gguf", "hang-b.gguf"):
        shutil.copy2(baseline.corpus.models["tiny-0.gguf"], faults / name)
    inputs = [baseline.inputs[0], str(faults), baseline.inputs[1]]  # the faults come in the middle of the scan
    out, pid_file = tmp_path / "out", tmp_path / "pids" / "stall-a.gguf.pid"
    limits = Limits(seconds=40.0, memory_bytes=1 << 30)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(scan, inputs, out, baseline.options, RayExecutor(None, limits), work=faulty_scan_task)
        deadline = time.monotonic() + 300
        while not pid_file.exists() and time.monotonic() < deadline and not running.done():
            time.sleep(0.1)
        finished_before_kill = (out / "journal.jsonl").read_bytes().count(b"\n")
        os.kill(int(pid_file.read_text()), signal.SIGKILL)  # the worker running stall-a, from outside
        report = running.result(timeout=600)
    assert 0 < finished_before_kill < 52
    rows = {os.path.basename(r.row.path): r.row for r in report.results}
    assert len(report.results) == 52 and report.scanned == 52
    assert rows["stall-a.gguf"].status == "error" and rows["stall-a.gguf"].error_kind == "worker-lost"
    assert rows["hang-b.gguf"].error_kind == "timeout" and 40 <= rows["hang-b.gguf"].seconds < 70
    assert (out / "journal.jsonl").read_bytes().count(b"\n") == 52  # one line per model: none lost, none twice
    table = comparable(out)
    assert len(table) == 52 and table["path"].is_unique
    others = table[~table["path"].str.contains("/faults/")].reset_index(drop=True)
    pd.testing.assert_frame_equal(others, baseline.table())
    # The rerun retries the model whose worker was lost, and only it.
    rerun = scan(inputs, out, baseline.options, RayExecutor(None, LIMITS))
    assert (rerun.scanned, rerun.reused) == (1, 51)
    assert {os.path.basename(r.row.path): r.row.status for r in rerun.results}["stall-a.gguf"] == "pass"
    assert len(comparable(out)) == 52


def test_cli_joins_a_running_cluster_by_address(baseline: Baseline, ray_cluster: str, tmp_path: Path) -> None:
    inputs = [str(baseline.corpus.root / "gguf")]
    result = subprocess.run([sys.executable, "-m", "provenance.cli", "scan", *inputs, "-o", str(tmp_path / "out"),
                             "--policy", str(baseline.options.policy), "--ray", ray_cluster, "--memory", "1GiB"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr  # some models lack the license the policy requires
    assert "on ray" in result.stderr and "9 models" in result.stderr
    table = comparable(tmp_path / "out")
    expected = baseline.table()
    pd.testing.assert_frame_equal(table, expected[expected["path"].isin(table["path"])].reset_index(drop=True))
    assert len(table) == 9
