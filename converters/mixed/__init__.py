"""Mixed precision (`export --precision mixed`): int8 only on the units of a model where it measured faster on
the target runtime and keeps enough accuracy, float elsewhere.

units.py (which submodules are chosen among, and their real inputs), plan.py (the choice rule and the plan file,
`--mixed-plan`), search.py (measuring cost and sensitivity, the whole-model check; format-agnostic: a converter
passes its conversions in as a `Toolchain`), pt2e.py (litert-torch's PT2E quantizer restricted to chosen units).
"""
