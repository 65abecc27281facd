"""Benchmarks on the user's own devices: Linux boxes over SSH, Android phones over adb.

- `bench_main`: the device-side entry point, `python -m device_runtime.remote.bench_main ARTIFACT...`, which prints
  the same JSON document as `pocketformer bench` on the host (it runs `device_runtime.measure`).
- `transport`: SSH (system `ssh`/`scp`, key-based) and adb transports behind one interface, and the orchestration
  that copies artifacts (and this package) to the device, runs either `bench_main` or a native runner the user
  points to (LiteRT's `benchmark_model`, ExecuTorch's `executor_runner`) and brings the JSON back.
- `parsers`: the native runners' text output turned into that JSON (tested on recorded real output).

Nothing here imports torch.
"""
