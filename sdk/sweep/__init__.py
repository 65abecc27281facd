"""Sweep: models x formats x precisions exported on Ray, each artifact benchmarked on every device.

`run` drives a sweep (`run.sweep`), `jobs` holds what a sweep is made of without Ray (units, content keys, the
cache), `cluster` is the Ray side (tasks, device actors, failure triage), `report` what a sweep shows.
"""
