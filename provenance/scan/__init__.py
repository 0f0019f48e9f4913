"""Scan many models at once, on this machine or a Ray cluster (docs/scan.md).

* :mod:`.discover`       inputs (files, folders, manifests) -> models (:mod:`.units`, :mod:`.manifest`)
* :mod:`.model`          the per-model unit of work: policy, inspect, identify, lineage, watermark
* :mod:`.caches`         what a worker reads once: policy, reference database, key registry
* :mod:`.local`          a pool of killable worker processes (:mod:`.executor`: the contract, :mod:`.limits`)
* :mod:`.ray_executor`   one Ray task per model
* :mod:`.store`          the output directory: journal (:mod:`.journal`), documents, tables (:mod:`.table`)
* :mod:`.run`            ``scan(inputs, out, options, executor) -> ScanReport``
"""
from provenance.scan.local import LocalExecutor
from provenance.scan.options import Limits, ScanOptions
from provenance.scan.ray_executor import RayExecutor
from provenance.scan.row import ModelResult, ModelRow
from provenance.scan.run import ScanReport, scan

__all__ = ["Limits", "LocalExecutor", "ModelResult", "ModelRow", "RayExecutor", "ScanOptions", "ScanReport", "scan"]
