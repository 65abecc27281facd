"""`.pte` without torch: device_runtime's executorch-numpy-runtime backend against the ExecuTorch binding.

executorch-numpy-runtime (ExecuTorch 1.3.1's runtime, numpy only) needs CPython >= 3.12; this venv is 3.11, so
every numpy-runtime run happens in a child process of the torch-free Python 3.13 device environment
(scripts/py313_device_env.sh; .ci/run builds it into .cache/py313-device, never at test time), with this checkout's
device_runtime on PYTHONPATH, as a device gets it. The binding's outputs come from this process (ExecuTorch
1.5.1, the exporter). Tiny models; the exports are tests/conftest.py's `cached_export` (the multi-length TinyBERT
is the one tests/test_buckets.py uses).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import device_runtime

ROOT = Path(__file__).resolve().parents[1]
ENV = ROOT / ".cache" / "py313-device"
PY313 = ENV / "bin" / "python"

# The child: load each case's artifact with the default backend choice, run its feeds, write the outputs and what the
# session says about itself. Prints one JSON line per case; the last line says which modules the process imported.
CHILD = r"""
import json, sys
import numpy as np
import device_runtime
cases = json.loads(sys.argv[1])
for case in cases:
    try:
        session = device_runtime.load(case["path"], **case.get("options", {}))
        feeds = np.load(case["feeds"])
        outputs = {}
        for key in sorted({k.split("/")[0] for k in feeds.files}):
            feed = {k.split("/", 1)[1]: feeds[k] for k in feeds.files if k.split("/")[0] == key}
            for i, out in enumerate(session.run(None, feed)):
                outputs[f"{key}/{i}"] = out
        np.savez(case["out"], **outputs)
        info = session.info
        report = {"backend": session.backend, "class": type(session).__name__, "inputs": info["inputs"],
                  "outputs": info["outputs"], "runtime_version": info.get("runtime_version"),
                  "runtime_package": info.get("runtime_package"), "methods": info.get("methods"),
                  "buckets": info.get("buckets"), "bucket_axis": info.get("bucket_axis"),
                  "memory_plans": {m: device_runtime.load(case["path"], method=m).memory_plan()
                                   for m in info.get("methods") or [] if m != "pocketformer_meta"}}
    except device_runtime.errors.PocketformerError as exc:
        report = {"error": type(exc).__name__, "message": str(exc)}
    print(json.dumps(report, default=str), flush=True)
print(json.dumps({"torch_modules": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
                  "python": sys.version.split()[0]}), flush=True)
"""


@pytest.fixture(scope="module")
def py313():
    if not (ENV / "READY").is_file():
        pytest.skip(f"no Python 3.13 device environment at {ENV}: build it with scripts/py313_device_env.sh "
                    "(.ci/run does); tests never download it")
    return PY313


def run_child(python, code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("POCKETFORMER_PTE_PYTHON", None)
    return subprocess.run([str(python), "-c", code, *args], capture_output=True, text=True, env=env, timeout=timeout)


def child_reports(python, cases: list[dict]) -> tuple[list[dict], dict]:
    result = run_child(python, CHILD, json.dumps(cases))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return lines[:-1], lines[-1]


@pytest.fixture(scope="module")
def artifacts(cached_export):
    """{label: path} of the .pte files compared: vision fp32 and int8 (static), TinyBERT int8 (dynamic, with the
    int8 embedding kernel that aborts on a bad id), both in fp16 (tests/test_executorch.py's) and TinyBERT at
    lengths 16 and 32 (three methods)."""
    return {"vision-fp32": cached_export("mobilevit_xxs", "pte", "fp32")[0].path,
            "vision-int8": cached_export("mobilevit_xxs", "pte", "int8")[0].path,
            "bert-int8": cached_export("tinybert_4l_312d", "pte", "int8")[0].path,
            "vision-fp16": cached_export("mobilevit_xxs", "pte", "fp16")[0].path,
            "bert-fp16": cached_export("tinybert_4l_312d", "pte", "fp16")[0].path,
            "bert-seqs16-32": next(r for r in cached_export("tinybert_4l_312d", ["pte", "tflite", "onnx"], "fp32",
                                                            seq_lens="16,32") if r.format == "pte").path}


def feeds_for(session, label: str) -> dict[str, dict[str, np.ndarray]]:
    """{feed key: feed}: seeded images, or token ids within the recorded ranges at several lengths."""
    rng = np.random.default_rng(0)
    inputs = session.get_inputs()
    if label.startswith("vision"):
        shape = inputs[0].shape
        return {f"image{i}": {inputs[0].name: rng.standard_normal(shape).astype(np.float32)} for i in range(2)}
    lengths = [9, 16, 23, 32] if label.endswith("16-32") else [inputs[0].shape[1]]
    feeds = {}
    for n in lengths:
        ids = np.concatenate([[101], rng.integers(1000, 29000, n - 2), [102]]).astype(np.int64)[None]
        feeds[f"len{n}"] = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return feeds


def test_this_python_cannot_run_the_numpy_runtime_and_says_why():
    if sys.version_info >= (3, 12):
        pytest.skip("this Python is >= 3.12: the numpy runtime's availability depends on its install")
    pte = device_runtime.list_backends()["pte"]
    assert [b["name"] for b in pte] == ["executorch_numpy", "executorch"]  # the numpy runtime first, where it runs
    assert "CPython >= 3.12" in pte[0]["unavailable"] and sys.version.split()[0] in pte[0]["unavailable"]


def test_the_numpy_runtime_matches_the_binding_on_every_precision_and_method(py313, artifacts, tmp_path):
    cases, expected = [], {}
    for label, path in artifacts.items():
        host = device_runtime.load(path, backend="executorch", adapt_io=True)
        feeds = feeds_for(host, label)
        np.savez(tmp_path / f"{label}-feeds.npz",
                 **{f"{k}/{n}": v for k, feed in feeds.items() for n, v in feed.items()})
        expected[label] = (host, {f"{k}/{i}": out for k, feed in feeds.items()
                                  for i, out in enumerate(host.run(None, feed))})
        cases.append({"path": str(path), "feeds": str(tmp_path / f"{label}-feeds.npz"),
                      "out": str(tmp_path / f"{label}-out.npz"), "options": {"adapt_io": True}})
    reports, process = child_reports(py313, cases)
    assert process["torch_modules"] == [] and process["python"].startswith("3.1")
    for (label, (host, want)), report in zip(expected.items(), reports):
        assert "error" not in report, (label, report)
        assert report["backend"] == "executorch_numpy" and report["runtime_version"] == "1.3.1"
        assert report["runtime_package"] == "executorch-numpy-runtime 1.4.0"
        # Same names, shapes, dtypes and value ranges, same methods and buckets, same memory plan.
        info = host.info
        assert report["inputs"] == json.loads(json.dumps(info["inputs"])), label
        assert report["outputs"] == json.loads(json.dumps(info["outputs"])), label
        assert report["methods"] == info["methods"] and report["buckets"] == info.get("buckets"), label
        plans = {m: device_runtime.load(host.path, backend="executorch", method=m).memory_plan()
                 for m in info["methods"] if m != "pocketformer_meta"}
        assert report["memory_plans"] == json.loads(json.dumps(plans)), label
        assert all(plan["planned_bytes"] > 0 for plan in plans.values()), label
        got = np.load(tmp_path / f"{label}-out.npz")
        assert sorted(got.files) == sorted(want), label
        worst = max(float(np.abs(got[k].astype(np.float64) - want[k]).max()) for k in want)
        # fp32 and int8: measured bit-identical here (the same XNNPACK kernels on the same CPU); the bound allows
        # another CPU class's kernel choice between ExecuTorch 1.3.1's and 1.5.1's XNNPACK builds. fp16: the
        # MobileViT program (all XNNPACK) measured bit-identical too; TinyBERT's (GELU in a portable fp16 kernel)
        # not: 9.8e-4 on outputs of 1.29 (7.6e-4 of the scale), well within the fp16 tolerance, the bound here.
        scale = max(float(np.abs(v).max()) for v in want.values())
        bound = (1e-5 if "fp32" in label or label.endswith("16-32") else
                 5e-3 * scale if "fp16" in label else 2e-3)
        print(f"numpy runtime vs binding, {label}: max abs {worst:.3g} (scale {scale:.3g})")
        assert worst <= bound, (label, worst)
    bucketed = reports[list(artifacts).index("bert-seqs16-32")]
    assert bucketed["class"] == "BucketedSession" and bucketed["buckets"] == [16, 32]
    assert bucketed["methods"] == ["forward", "pocketformer_meta", "seq16", "seq32"]


INPUT_CHECKS = r"""
import json, sys
import numpy as np
import device_runtime
bert, vision = sys.argv[1], sys.argv[2]
session = device_runtime.load(bert)
good = session.example_feed()
far = good["input_ids"].copy()
far.flat[3] = 40000
cases = {"id out of range": {**good, "input_ids": far},
         "negative id": {**good, "input_ids": -good["input_ids"]},
         "int32 ids": {**good, "input_ids": good["input_ids"].astype(np.int32)},
         "wrong length": {k: np.ones((1, 7), np.int64) for k in good},
         "missing mask": {k: v for k, v in good.items() if k != "attention_mask"}}
seen = {}
for name, feed in cases.items():
    try:
        session.run(None, feed)
        seen[name] = None
    except device_runtime.InputError as exc:
        seen[name] = [type(exc).__name__, str(exc)]
image = device_runtime.load(vision)
feed = image.example_feed()
feed[next(iter(feed))].flat[5] = np.nan
try:
    image.run(None, feed)
    seen["nan pixel"] = None
except device_runtime.InputError as exc:
    seen["nan pixel"] = [type(exc).__name__, str(exc)]
seen["after"] = [session.backend, float(session.run(None, good)[0].ravel()[0])]
print(json.dumps(seen))
"""


def test_input_checks_refuse_bad_feeds_before_the_numpy_runtime_sees_them(py313, artifacts):
    # ExecuTorch 1.3.1's int8 embedding kernel aborts the whole process on an id outside the vocabulary, as 1.5.1's
    # does (measured: SIGABRT, "Index out of bounds for weight"): the child must survive every case.
    result = run_child(py313, INPUT_CHECKS, str(artifacts["bert-int8"]), str(artifacts["vision-fp32"]))
    assert result.returncode == 0, result.stderr[-2000:]
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["id out of range"][0] == "ValueRangeError" and "40000" in seen["id out of range"][1]
    assert "[0, 30521]" in seen["id out of range"][1]
    assert seen["negative id"][0] == "ValueRangeError"
    assert seen["int32 ids"][0] == "DTypeError" and "astype(np.int64)" in seen["int32 ids"][1]
    assert seen["wrong length"][0] == "ShapeError" and seen["missing mask"][0] == "MissingInputError"
    assert seen["nan pixel"][0] == "NonFiniteInputError"
    assert seen["after"][0] == "executorch_numpy" and np.isfinite(seen["after"][1])


THREADS = r"""
import json, os, sys
import numpy as np
import device_runtime
from device_runtime.backends.executorch_numpy import pool_threads
path = sys.argv[1]
pool = pool_threads()
session = device_runtime.load(path, num_threads=None)
before = len(os.listdir("/proc/self/task"))
session.run(None, session.example_feed())  # ExecuTorch makes its CPU pool on the first delegated run
after = len(os.listdir("/proc/self/task"))
same = device_runtime.load(path, num_threads=pool)
try:
    device_runtime.load(path, num_threads=pool + 1)
    refused = None
except device_runtime.errors.UsageError as exc:
    refused = str(exc)
print(json.dumps({"pool": pool, "info": session.info["threadpool_threads"], "new_threads": after - before,
                  "same": same.backend, "refused": refused}))
"""


def test_the_fixed_thread_pool_is_reported_and_other_counts_refused(py313, artifacts):
    result = run_child(py313, THREADS, str(artifacts["vision-fp32"]))
    assert result.returncode == 0, result.stderr[-2000:]
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["info"] == seen["pool"] == (os.cpu_count() or 1)
    assert seen["new_threads"] == seen["pool"] - 1  # pthreadpool: the caller plus pool - 1 workers
    assert seen["same"] == "executorch_numpy"
    assert f"fixed at {seen['pool']} thread(s)" in seen["refused"] and "backend 'executorch'" in seen["refused"]


# -- programs ExecuTorch 1.3.1 cannot run ----------------------------------------------------------------------
def sym_int_program(path: Path) -> Path:
    """A dynamic-shape program calling executorch_prim::sym_int, which ExecuTorch 1.5.1's kernels have and 1.3.1's
    lack. torch decomposes `torch.sym_int` of a float to trunc before ExecuTorch sees it, so the operator entry is
    set back to sym_int in the emitted program (the same scalar semantics); the binding runs it correctly."""
    import torch
    from executorch.exir import to_edge_transform_and_lower
    from executorch.exir._serialize._program import deserialize_pte_binary, serialize_pte_binary

    class Half(torch.nn.Module):
        def forward(self, x):
            return x.sum() * torch.sym_int(x.shape[1] / 2)

    n = torch.export.Dim("n", min=2, max=16)
    program = to_edge_transform_and_lower(torch.export.export(Half(), (torch.ones(1, 8),),
                                                              dynamic_shapes={"x": {1: n}})).to_executorch()
    pte = deserialize_pte_binary(program.buffer)
    ops = pte.program.execution_plan[0].operators
    assert any(op.name == "executorch_prim::trunc" for op in ops)
    for op in ops:
        if op.name == "executorch_prim::trunc":
            op.name = "executorch_prim::sym_int"
    path.write_bytes(bytes(serialize_pte_binary(pte)))
    session = device_runtime.load(path, backend="executorch")
    x = np.zeros((1, 16), np.float32)
    x[0, :7] = np.arange(7)
    assert session.run(None, [x])[0] == 21 * 8  # sum 21, times sym_int(16 / 2)
    return path


def renamed_delegate(source: Path, path: Path) -> Path:
    """The vision program with its XNNPACK delegate named as a backend the CPU runtime does not link (Vulkan)."""
    from executorch.exir._serialize._program import deserialize_pte_binary, serialize_pte_binary

    pte = deserialize_pte_binary(source.read_bytes())
    for plan in pte.program.execution_plan:
        for delegate in plan.delegates:
            delegate.id = "VulkanBackend"
    path.write_bytes(bytes(serialize_pte_binary(pte)))
    return path


REFUSE = r"""
import json, sys
import device_runtime
out = {}
for path in sys.argv[1:]:
    try:
        device_runtime.load(path)
        out[path] = None
    except device_runtime.errors.PocketformerError as exc:
        out[path] = [type(exc).__name__, str(exc), exc.exit_code]
print(json.dumps(out))
"""


def test_a_program_the_older_runtime_cannot_run_is_refused_before_loading(py313, artifacts, tmp_path):
    pytest.importorskip("executorch")
    vision = artifacts["vision-fp32"]
    # The sym_int program sits in an export folder whose report.json records the exporter (ExecuTorch 1.5.1).
    export_folder = tmp_path / "export"
    export_folder.mkdir()
    shutil.copy(vision.parent / "report.json", export_folder / "report.json")
    sym_int = sym_int_program(export_folder / vision.name)
    newer_schema = tmp_path / "et13.pte"
    data = bytearray(vision.read_bytes())
    data[4:8] = b"ET13"  # a future program schema
    newer_schema.write_bytes(bytes(data))
    vulkan = renamed_delegate(vision, tmp_path / "vulkan.pte")
    result = run_child(py313, REFUSE, str(sym_int), str(newer_schema), str(vulkan))
    assert result.returncode == 0, result.stderr[-2000:]  # refused, never crashed
    refused = json.loads(result.stdout.splitlines()[-1])
    for path, why in refused.items():
        assert why is not None, f"{path} loaded"
        kind, message, code = why
        assert kind == "IncompatibleProgramError" and code == 3 and "ExecuTorch 1.3.1" in message, message
        assert "backend 'executorch'" in message  # says what runs it
        print(f"refused {Path(path).name}: {message}")
    assert "written by ExecuTorch 1.5.1" in refused[str(sym_int)][1]
    assert "executorch_prim::sym_int.Scalar" in refused[str(sym_int)][1]
    assert "program schema ET13, the runtime reads ET12" in refused[str(newer_schema)][1]
    assert "no report.json beside it records" in refused[str(newer_schema)][1]
    assert "VulkanBackend" in refused[str(vulkan)][1] and "XnnpackBackend" in refused[str(vulkan)][1]
    # Before loading: ExecuTorch's own loader never saw them (it logs every program and method it rejects).
    assert "program.cpp" not in result.stderr and "method.cpp" not in result.stderr


def test_a_pte_bench_worker_runs_torch_free_through_the_numpy_runtime(py313, artifacts):
    from device_runtime.isolated import benchmark_isolated

    path = str(artifacts["vision-fp32"])
    numpy_doc = benchmark_isolated([path], runs=4, warmup=1, threads=None, pte_python=str(py313))
    binding_doc = benchmark_isolated([path], runs=4, warmup=1, threads=1, pte_python=str(py313))
    (fast,), (bound,) = numpy_doc["results"], binding_doc["results"]
    assert fast["backend"] == "executorch_numpy" and fast["runtime_version"] == "1.3.1"
    assert fast["process"]["imports_torch"] is False and fast["process"]["python"].startswith("3.13")
    assert fast["process"]["executable"] == str(py313) and fast["latency"]["p50"] > 0
    # One thread is not the numpy runtime's fixed pool: that worker runs here, through the binding, and says so.
    assert bound["backend"] == "executorch" and bound["process"]["imports_torch"] is True
    assert bound["process"]["executable"] == sys.executable
    print(f"bench worker peak RSS: numpy runtime {fast['peak_rss_mb']:.0f} MB, binding {bound['peak_rss_mb']:.0f} MB")
    assert fast["peak_rss_mb"] < bound["peak_rss_mb"] / 2
