"""Per-model functions that misbehave on purpose, chosen by the model's file name, around the
real :func:`provenance.scan.model.scan_task`. Module level, so local workers and Ray workers
import them by name like the real one.

* ``hang-*``:  never returns (the executor must cut it at its time limit);
* ``stall-*``: writes its worker's pid to ``<model's folder>/../pids/<name>.pid``, then waits,
  so a test can kill that worker in the middle of the task;
* ``hog-*``:   allocates far more than the scan's memory limit;
* ``crash-*``: the worker process exits at once, as a segfaulting native library would.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from provenance.scan.model import ScanTask, scan_task


def faulty_scan_task(task: ScanTask) -> str:
    name = os.path.basename(task.unit.path)
    if name.startswith("hang-"):
        time.sleep(3600)
    elif name.startswith("stall-"):
        pids = Path(task.unit.path).parent.parent / "pids"
        pids.mkdir(exist_ok=True)
        (pids / f"{name}.tmp").write_text(str(os.getpid()))
        os.replace(pids / f"{name}.tmp", pids / f"{name}.pid")
        time.sleep(3600)
    elif name.startswith("hog-"):
        hog = np.ones(8 << 30, dtype=np.uint8)  # 8 GiB: past any limit the tests set
        return str(hog.sum())
    elif name.startswith("crash-"):
        os._exit(70)
    return scan_task(task)


def cache_probe_scan_task(task: ScanTask) -> str:
    """The real result, with how many times this worker has loaded the reference database and
    the key registry so far (the caches' misses) added to the model's details."""
    from provenance.scan import caches
    from provenance.scan.row import ModelResult, decode_outcome, encode
    from provenance.watermark.trace import _load_registry_once

    result = decode_outcome(scan_task(task))
    assert isinstance(result, ModelResult)
    result.details["probe"] = {"pid": os.getpid(), "refdb_loads": caches._refdb.cache_info().misses,
                               "registry_loads": _load_registry_once.cache_info().misses}
    return encode(result)
