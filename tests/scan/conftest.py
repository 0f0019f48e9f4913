"""Session fixtures for the scan tests: the corpus, its inputs, a policy, one local scan to compare against."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from provenance.scan import Limits, LocalExecutor, ScanOptions, ScanReport, scan
from provenance.scan.row import VOLATILE_COLUMNS
from tests.conftest import QUANT_DIR, SHARED_DATA
from tests.support.model_corpus import Corpus, build_corpus

POLICY = """version = 1
[format]
allow = ["gguf", "gguf-split", "safetensors", "safetensors-sharded", "hf-directory", "llama2c"]
[metadata]
require = ["general.license"]
"""


@dataclass
class Baseline:
    corpus: Corpus
    inputs: list[str]
    options: ScanOptions
    out: Path
    report: ScanReport

    def table(self) -> pd.DataFrame:
        return comparable(self.out)


def comparable(out: Path) -> pd.DataFrame:
    """A scan's Parquet table without the columns that differ between runs (timing, worker), sorted by path."""
    table = pd.read_parquet(out / "scan.parquet", dtype_backend="numpy_nullable").drop(columns=list(VOLATILE_COLUMNS))
    return table.sort_values("path").reset_index(drop=True)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("uploads"), QUANT_DIR)


@pytest.fixture(scope="session")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "policy.toml"
    path.write_text(POLICY)
    return path


@pytest.fixture(scope="session")
def baseline(corpus: Corpus, policy_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Baseline:
    """The corpus and the real files of ../shared/data, scanned once by the local executor."""
    inputs = [str(corpus.root), str(SHARED_DATA)]
    options = ScanOptions(policy=str(policy_file))
    out = tmp_path_factory.mktemp("scan-local")
    report = scan(inputs, out, options, LocalExecutor(2, Limits(seconds=300)))
    return Baseline(corpus, inputs, options, out, report)
