"""Serve: replaying real request streams against the ways one model can be served (`bench`: serve-bench).

The serving machinery itself (buckets, packing, the Batcher, session pools) lives in `device_runtime`, since
an edge app embeds it without torch; this package measures it from the host.
"""
