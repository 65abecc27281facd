"""Pocketformer's public Python API.

    import sdk
    results = sdk.export("mobilevit_xxs", formats=["pte"], precision="fp32", out_dir="out")
    session = sdk.load(results[0].path)
    print(sdk.benchmark(results[0].path, runs=50).latency)
"""
from __future__ import annotations

from typing import Any


def export(*args: Any, **kwargs: Any):
    """See `sdk.export.export`: export a zoo model, verify each artifact against PyTorch, write report.json."""
    from sdk.export import export as _export

    return _export(*args, **kwargs)


def load(path, backend: str | None = None, num_threads: int | None = None, **options):
    """Open an artifact with the device runtime (`device_runtime.load`)."""
    import device_runtime

    return device_runtime.load(path, backend=backend, num_threads=num_threads, **options)


def benchmark(path, feed=None, warmup: int = 5, runs: int = 50, backend: str | None = None,
              num_threads: int | None = None):
    """Load an artifact and measure load time, first run and steady-state latency percentiles."""
    session = load(path, backend=backend, num_threads=num_threads, adapt_io=True)
    return session.benchmark(feed, warmup=warmup, runs=runs)


def list_models() -> list[str]:
    from models_zoo import list_models as _list

    return _list()


def get_model(name: str, tiny: bool = False):
    from models_zoo import get_model as _get

    return _get(name, tiny=tiny)


__all__ = ["export", "load", "benchmark", "list_models", "get_model"]
