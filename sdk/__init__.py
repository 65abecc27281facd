"""Pocketformer's public Python API.

    import sdk
    results = sdk.export("mobilevit_xxs", formats=["pte"], precision="fp32", out_dir="out")
    session = sdk.load(results[0].path)
    print(sdk.benchmark(results[0].path, runs=50).latency)

The names here are the real functions (same objects, same signatures) of the modules that own them: no
wrappers. The capabilities are subpackages: `sdk.export` (the pipeline), `sdk.measure` (bench, tune, analysis),
`sdk.device` (bundles, device verification, the Android app), `sdk.serve`, `sdk.sweep`, `sdk.report`,
`sdk.compress`, `sdk.cli`, and `sdk.console` beneath them all.

`sdk.export` names both the function and the package `sdk/export/`. Importing that package binds it on `sdk`
once, on its first import, which is the line below; the function is bound after it, so `sdk.export` stays the
function whatever is imported later (tests/test_artifact_contract.py checks it). Import the package's modules
by name (`from sdk.export.plan import plan_work`), not as `import sdk.export.plan`.
"""
from __future__ import annotations

from device_runtime import load
from models_zoo import get_model, list_models
from sdk.export.api import ExportResult, export
from sdk.measure.tune import tune  # a zoo name, the user's spec (spec_from_module) as export takes it, or a pipeline


def benchmark(path, feed=None, warmup: int = 5, runs: int = 50, backend: str | None = None,
              num_threads: int | None = None):
    """Load an artifact and measure load time, first run and steady-state latency percentiles."""
    session = load(path, backend=backend, num_threads=num_threads, adapt_io=True)
    return session.benchmark(feed, warmup=warmup, runs=runs)


__all__ = ["export", "ExportResult", "load", "benchmark", "tune", "list_models", "get_model"]
