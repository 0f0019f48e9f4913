"""A worker imports everything before a memory limit applies: a first import under the limit
fails as a bare ImportError (the loader cannot map a shared object), which once turned an
out-of-memory row into an "internal" one on a clean clone."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from provenance.watermark import DerivedKey, embed_checkpoint, read_secret
from tests.conftest import QUANT_DIR, ROOT, SHARED_DATA
from tests.support.model_corpus import Corpus

PROBE = """
import json, sys
from provenance.scan.discover import discover
from provenance.scan.model import ScanTask, scan_model, warm_up
from provenance.scan.options import ScanOptions

warm_up()
before = set(sys.modules)
inputs, references, keys = json.loads(sys.argv[1])
options = ScanOptions(references=tuple(references), keys=keys)
statuses = []
for unit in discover(inputs).units:
    statuses.append(scan_model(ScanTask(unit, options, "probe")).row.status)
new = [name for name in set(sys.modules) - before
       if name.startswith("provenance") or str(getattr(sys.modules[name], "__file__", "") or "").endswith(".so")]
print(json.dumps({"new": sorted(new), "statuses": statuses}))
"""


def test_a_scan_after_warm_up_loads_no_module(corpus: Corpus, tmp_path: Path) -> None:
    registry = tmp_path / "keys"
    registry.mkdir()
    (registry / "secret").write_text("correct horse battery staple 2024\n")
    (registry / "clients.txt").write_text("initech\nacme\n")
    leak = tmp_path / "leak" / "leak.gguf"
    leak.parent.mkdir()
    embed_checkpoint(QUANT_DIR / "tiny-llama-f16.gguf", leak, DerivedKey(read_secret(registry / "secret"), "acme"), amplitude=1e-2)
    inputs = [str(corpus.root), str(SHARED_DATA), str(leak.parent)]
    argument = json.dumps([inputs, [str(QUANT_DIR / "tiny-llama-f32.gguf")], str(registry)])
    done = subprocess.run([sys.executable, "-c", PROBE, argument], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(probe["statuses"]) > 30 and {"pass", "error", "violation"} <= set(probe["statuses"])
    assert probe["new"] == []
