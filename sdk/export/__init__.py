"""Export: a model to each format, every artifact verified against PyTorch on held-out real inputs, then recorded.

Owns the export path and nothing else: the shapes an export holds (`shapes`: one shape, several sequence
lengths, several batch sizes, a packed row), the plan that turns them into per-format work items (`plan`), and
the one loop that converts, verifies and records each item (`steps`). `api.export` is the public entry point,
re-exported as `sdk.export`.

`sdk.export` is that function, not this package: `sdk/__init__.py` binds the name after importing this package,
so import from here by name (`from sdk.export.plan import plan`), never as `import sdk.export.plan`.
"""
