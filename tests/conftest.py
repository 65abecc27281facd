"""Shared test fixtures. Tests run on the tiny variants of the real architectures; the matrices come from
the registries (`list_models()`, `list_converters()`), never from lists typed here."""
from __future__ import annotations

import functools

import pytest


@pytest.fixture(scope="session")
def export_tiny(tmp_path_factory):
    """`export_tiny(model, fmt, precision, **options)` -> ExportResult, exported once per test session."""
    from sdk.pipeline import export

    root = tmp_path_factory.mktemp("exports")

    @functools.lru_cache(maxsize=None)
    def run(model: str, fmt: str, precision: str | None = None, **options):
        return export(model, fmt, precision, out_dir=root / fmt, tiny=True, **options)[0]

    return run
