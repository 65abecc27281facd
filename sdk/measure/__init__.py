"""Measure: how fast and how costly an artifact or model is on this host or a device.

`bench` (several artifacts, interleaved, each in its own process, or on the user's device), `tune` (the fastest
verified artifact of a model here) and `analysis` (parameters, FLOPs, memory traffic and the CPU's roofline).
"""
