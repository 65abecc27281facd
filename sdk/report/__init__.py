"""Report: what the host writes about its artifacts for people to read.

`numerics` (device-vs-host figures), `zoo` (the zoo table) and `html_page` (`pocketformer report`: one HTML page
with tables and plots of everything under an output folder: exports, benchmarks, device runs, sweeps). It is the
top of the SDK below the CLI: it reads what every other capability writes.
"""
