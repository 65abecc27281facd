"""Native benchmark runners' text output -> Pocketformer's benchmark result (and per-operator profile).

- LiteRT / TensorFlow Lite `benchmark_model` (tensorflow/lite/tools/benchmark): the `count=... avg=... std=...`
  lines of the warm-up and regular phases (newer builds add `p5=... median=... p95=...`), the
  `Inference timings in us: Init: .., First inference: .., Warmup (avg): .., Inference (avg): ..` summary, the
  memory lines (`Memory footprint delta from the start of the tool (MB): init=.. overall=..`, older
  `Peak memory footprint (MB): ...`, and `Overall peak memory footprint (MB) via periodic monitoring: ..` with
  `--report_peak_memory_footprint=true`) and, with `--enable_op_profiling=true`, the "Operator-wise Profiling
  Info for Regular Benchmark Runs" tables, where a delegate shows as one node of the delegate's type.
- ExecuTorch `executor_runner` (examples/portable/executor_runner): `Model loaded in X ms.` and
  `Iteration i of N: X ms` (recent builds), `Model executed successfully N time(s) in X ms.`, and
  `ETDump written to file '...'` when built with the event tracer.
- The same runner built with bundle IO (`ET_BUNDLE_IO_ENABLED`) on a BundledProgram `.bpte`
  (`parse_bundle_io`): `=== Error stats for testset I ===` with its four error lines, then
  `TEST: BundleIO index[I] Test_result: PASS` or `... FAIL` (after "Model output don't match expected BundleIO
  bpte ref data. rtol=R atol=A"). The portable runner checks test case 0 only (`constexpr size_t testset_idx = 0`
  in executor_runner.cpp); other runners built on it (Arm's, RISC-V's) print the same line per case.

Log prefixes (`INFO: `, logcat's `I tflite  : `, ExecuTorch's `I 00:00:00.0 executorch:file.cpp:123] `) are
ignored. The formats were taken from real output (tests/data/runner_output); a runner that prints none of the
expected lines is an error that quotes what it did print, never a guess.
"""
from __future__ import annotations

import re
from typing import Any

from device_runtime.errors import PocketformerError
from device_runtime.profile import OpProfile, OpProfileRow


class RunnerOutputError(PocketformerError, ValueError):
    """The runner's output does not contain the figures expected (or says the run failed)."""


_NUM = r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"


def _f(value: str | None) -> float | None:
    return float(value) if value is not None else None


def _tail(text: str, lines: int = 8) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


# -- LiteRT benchmark_model ------------------------------------------------------------------------------
_COUNT = re.compile(rf"(?<![\w(])count=(\d+)(?: first=({_NUM}))? curr=({_NUM})"
                    rf"(?: min=({_NUM}) max=({_NUM}) avg=({_NUM}) std=({_NUM}))?"
                    rf"(?: p5=({_NUM}) median=({_NUM}) p95=({_NUM}))?")
_TIMINGS = re.compile(rf"Inference timings in us: Init: ({_NUM}), First inference: ({_NUM}), "
                      rf"Warmup \(avg\): ({_NUM}), Inference \(avg\): ({_NUM})")
_TIMINGS_OLD = re.compile(rf"Average inference timings in us: Warmup: ({_NUM}), Init: ({_NUM}), "
                          rf"Inference: ({_NUM})")
_MEM_DELTA = re.compile(rf"(Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): "
                        rf"init=({_NUM}) overall=({_NUM})")
_MEM_PEAK = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring: ({_NUM})")
_APPLIED = re.compile(r"Explicitly applied (\S+) delegate, and the model graph will be (completely|partially) "
                      r"executed by the delegate")
_REPLACING = re.compile(r"Replacing (\d+) out of (\d+) node\(s\) with delegate \((\w+)\)")
_FAILED = re.compile(r"^(?:.*?\b)?(Benchmarking failed\.|Failed to .*|ERROR: .*)$", re.MULTILINE)


def parse_benchmark_model(text: str) -> dict[str, Any]:
    """The figures of one `benchmark_model` run: times in ms, memory in MB, the op profile if it was on."""
    timings = _TIMINGS.search(text)
    old = _TIMINGS_OLD.search(text) if not timings else None
    if "Benchmarking failed." in text or (not timings and not old):
        errors = [m.group(1).strip() for m in _FAILED.finditer(text)]
        why = "; ".join(dict.fromkeys(errors)) if errors else "no 'Inference timings in us' line"
        raise RunnerOutputError(f"benchmark_model did not complete a benchmark ({why}). Last output:\n{_tail(text)}")
    counts = [m for m in _COUNT.finditer(text) if not _preceded_by(text, m.start(), "Timings (microseconds): ")]
    summary_at = (timings or old).start()
    regular = [m for m in counts if m.start() < summary_at and m.group(6) is not None]
    latency = None
    runs = None
    if regular:
        m = regular[-1]
        runs = int(m.group(1))
        us = [_f(m.group(i)) for i in range(2, 11)]
        first, curr, lo, hi, avg, std, p5, median, p95 = us
        latency = {"unit": "ms", "p50": median / 1e3 if median is not None else None, "p90": None, "p99": None,
                   "mean": avg / 1e3, "std": std / 1e3, "min": lo / 1e3, "max": hi / 1e3, "p10": None,
                   "p95": p95 / 1e3 if p95 is not None else None, "p5": p5 / 1e3 if p5 is not None else None}
    if timings:
        init_us, first_us, warmup_us, inference_us = (float(g) for g in timings.groups())
    else:
        warmup_us, init_us, inference_us = (float(g) for g in old.groups())
        first_us = None
    if latency is None:
        latency = {"unit": "ms", "p50": None, "p90": None, "p99": None, "mean": inference_us / 1e3, "std": None,
                   "min": None, "max": None, "p10": None, "p95": None}
    result: dict[str, Any] = {
        "load_time_ms": init_us / 1e3, "first_run_ms": first_us / 1e3 if first_us is not None else None,
        "warmup_mean_ms": warmup_us / 1e3, "runs": runs, "latency": latency,
        "load_time_note": "benchmark_model's Init: interpreter creation, delegate application, tensor allocation",
    }
    peak = _MEM_PEAK.search(text)
    delta = _MEM_DELTA.search(text)
    if peak:
        result["peak_rss_mb"] = float(peak.group(1))
        result["peak_rss_scope"] = "benchmark_model's periodic monitoring of the process (MB)"
    elif delta:
        result["peak_rss_mb"] = float(delta.group(3))
        result["peak_rss_scope"] = (f"benchmark_model's '{delta.group(1)}' overall figure: max RSS growth since the "
                                    f"tool started (MB), approximate by the tool's own note")
    else:
        result["peak_rss_mb"] = None
    if delta:
        result["load_rss_delta_mb"] = float(delta.group(2))
    applied = _APPLIED.search(text)
    replacing = _REPLACING.search(text)
    if applied or replacing:
        result["delegation"] = {"delegate": applied.group(1) if applied else replacing.group(3),
                                "whole_graph": (applied.group(2) == "completely") if applied else
                                replacing.group(1) == replacing.group(2)}
        if replacing:
            result["delegation"].update(nodes=int(replacing.group(1)), of_nodes=int(replacing.group(2)))
    profile = parse_benchmark_model_profile(text, required=False)
    if profile is not None:
        result["profile"] = profile.to_dict()
    return result


def _preceded_by(text: str, pos: int, prefix: str) -> bool:
    return text[max(0, pos - len(prefix)):pos] == prefix


_SECTION = "Operator-wise Profiling Info for Regular Benchmark Runs:"
_RUN_ORDER = re.compile(r"=+ Run Order =+\n(.*?)(?:\n\s*\n|\Z)", re.DOTALL)
_SECTION_TIMINGS = re.compile(rf"Timings \(microseconds\): count=(\d+)(?: first=({_NUM}))? curr=({_NUM})"
                              rf"(?: min=({_NUM}) max=({_NUM}) avg=({_NUM}))?")


def parse_benchmark_model_profile(text: str, required: bool = True) -> OpProfile | None:
    """The "Run Order" table of the regular runs' operator-wise profile as an `OpProfile` (microseconds).

    Columns: node type, start, first, avg ms, %, cdf%, mem KB, times called, name. A delegate is one node of
    the delegate's type (`TfLiteXNNPackDelegate`, `TfLiteNnapiDelegate`, `Vx Delegate`) whose name lists the
    nodes it replaced; its operators are not broken down (LiteRT does not report them).
    """
    text = "\n".join(_strip_prefix(line) for line in text.splitlines())
    if _SECTION in text:
        section = text.split(_SECTION, 1)[1]
    else:  # builds that print only the regular runs' tables
        blocks = [b for b in text.split("Profiling Info for Benchmark Initialization:")]
        section = blocks[-1] if len(blocks) > 1 and "Run Order" in blocks[-1] else (text if "Run Order" in text else "")
        if len(blocks) > 1 and section is blocks[-1]:
            # the initialization block's own tables come first; skip past its Timings line
            parts = section.split("nodes observed", 1)
            section = parts[1] if len(parts) > 1 else ""
    order = _RUN_ORDER.search(section)
    timing = _SECTION_TIMINGS.search(section)
    if not order or not timing:
        if required:
            raise RunnerOutputError("no operator-wise profile in the benchmark_model output (run it with "
                                    "--enable_op_profiling=true)")
        return None
    runs = int(timing.group(1))
    avg_us = _f(timing.group(6)) if timing.group(6) is not None else _f(timing.group(3))
    run_time_us = avg_us * runs
    rows = []
    for line in order.group(1).splitlines():
        cells = [c.strip() for c in line.split("\t") if c.strip()]
        if len(cells) < 9 or cells[0].startswith("["):
            continue  # the header row
        node_type, _start, _first, avg_ms, _pct, _cdf, _mem, called, name = cells[:9]
        per_run_us = float(avg_ms) * 1e3
        calls = max(1, int(float(called)))  # older builds print 0 times called
        total = per_run_us * runs
        delegate = "delegate" in node_type.lower()
        rows.append(OpProfileRow(node_type, name, node_type if delegate else "tflite builtin", calls * runs, total,
                                 total / (calls * runs), total / run_time_us if run_time_us else 0.0))
    rows.sort(key=lambda r: -r.total_us)
    table = OpProfile(rows, runs, run_time_us, "benchmark_model --enable_op_profiling=true")
    if any(r.provider != "tflite builtin" for r in rows):
        table.notes.append("LiteRT reports a delegate as one node (its name lists the nodes it replaced); "
                           "the operators inside it are not broken down")
    return table


def _strip_prefix(line: str) -> str:
    line = re.sub(r"^(?:INFO|VERBOSE|WARNING|ERROR): ", "", line)
    return re.sub(r"^[IWEDV] tflite\s*: ", "", line)


# -- ExecuTorch executor_runner ---------------------------------------------------------------------------
_ET_LOADED = re.compile(rf"Model loaded in ({_NUM}) ms\.")
_ET_ITER = re.compile(rf"Iteration (\d+) of (\d+): ({_NUM}) ms")
_ET_DONE = re.compile(rf"Model executed successfully (\d+) time\(s\) in ({_NUM}) ms\.")
_ET_UNTIMED = re.compile(r"Model executed successfully\.")
_ET_ETDUMP = re.compile(r"ETDump written to file '([^']+)'")
_ET_FAILED = re.compile(r"((?:Execution|Loading) of method \S+ failed with status \S+|Failed to parse model file "
                        r"\S+|Could not load inputs: \S+|Could not prepare inputs: \S+)")


def parse_executor_runner(text: str) -> dict[str, Any]:
    """The figures of one `executor_runner` run (`--num_executions N`): times in ms."""
    failed = _ET_FAILED.search(text)
    done = _ET_DONE.search(text)
    if failed or not done:
        if not failed and _ET_UNTIMED.search(text):
            raise RunnerOutputError("this executor_runner prints no timing ('Model executed successfully.' without "
                                    "'N time(s) in X ms'): build a recent one (ExecuTorch >= 0.5)")
        why = failed.group(1) if failed else "no 'Model executed successfully N time(s) in X ms' line"
        raise RunnerOutputError(f"executor_runner did not complete ({why}). Last output:\n{_tail(text)}")
    n, total_ms = int(done.group(1)), float(done.group(2))
    iterations = [float(m.group(3)) for m in _ET_ITER.finditer(text)]
    loaded = _ET_LOADED.search(text)
    result: dict[str, Any] = {"load_time_ms": _f(loaded.group(1)) if loaded else None, "runs": n,
                              "peak_rss_mb": None, "total_ms": total_ms}
    if len(iterations) == n and n >= 2:
        import numpy as np

        steady = np.asarray(iterations[1:], dtype=np.float64)  # iteration 1 is the cold run
        p10, p50, p90, p95, p99 = np.percentile(steady, [10, 50, 90, 95, 99])
        result["first_run_ms"] = iterations[0]
        result["runs"] = n - 1
        result["latency"] = {"unit": "ms", "p50": float(p50), "p90": float(p90), "p99": float(p99),
                             "mean": float(steady.mean()), "std": float(steady.std()), "min": float(steady.min()),
                             "max": float(steady.max()), "p10": float(p10), "p95": float(p95)}
    else:
        result["first_run_ms"] = iterations[0] if iterations else None
        result["latency"] = {"unit": "ms", "p50": None, "p90": None, "p99": None, "mean": total_ms / n, "std": None,
                             "min": None, "max": None, "p10": None, "p95": None}
        result["latency_note"] = ("executor_runner printed only the total time of its executions, cold run "
                                  "included; the mean is total / N")
    etdump = _ET_ETDUMP.search(text)
    if etdump:
        result["etdump_path"] = etdump.group(1)
    if "XNNPACKBackend" in text or "XNNExecutor" in text:
        result["delegation"] = {"delegate": "XnnpackBackend"}
    return result


# -- ExecuTorch executor_runner with bundle IO (a .bpte) -----------------------------------------------------
_BIO_RESULT = re.compile(r"TEST: BundleIO index\[(\d+)\] Test_result: (PASS|FAIL)")
_BIO_STATS = re.compile(r"=== Error stats for testset (\d+) ===")
_BIO_STAT = re.compile(rf"^\s*(mean_absolute_error|max_absolute_error|mean_relative_error|max_relative_error):\s*"
                       rf"({_NUM}|[-+]?(?:nan|inf))\s*$", re.IGNORECASE)
_BIO_TOLERANCE = re.compile(rf"BundleIO bpte ref data\. rtol=({_NUM}) atol=({_NUM})")
_BIO_FAILED = re.compile(r"((?:Execution|Loading) of method \S+ failed with status \S+|Failed to parse model file "
                         r"\S+|load_bundled_input failed with status \S+|get_program_data\(\) from bundle PTE failed"
                         r"[^\n]*|ERROR: unknown command line flag [^\n]*)")
_ET_PREFIX = re.compile(r"^[IWEDF] \d+:\d+:\d+\.\d+ executorch:\S+\] ")


def parse_bundle_io(text: str) -> dict[str, Any]:
    """The verdict of an `executor_runner` run on a `.bpte`: one entry per test case it checked (index, PASS or
    FAIL, and the error statistics it printed for that case), the tolerance it printed on a failure, and
    `passed` (every checked case passed)."""
    stats: dict[int, dict[str, float]] = {}
    current = None
    for raw in text.splitlines():
        line = _ET_PREFIX.sub("", raw)
        head = _BIO_STATS.search(line)
        if head:
            current = stats.setdefault(int(head.group(1)), {})
            continue
        stat = _BIO_STAT.match(line)
        if stat and current is not None:
            current[stat.group(1).lower()] = float(stat.group(2))
    cases = [{"index": int(m.group(1)), "passed": m.group(2) == "PASS", "stats": stats.get(int(m.group(1)))}
             for m in _BIO_RESULT.finditer(text)]
    if not cases:
        failed = _BIO_FAILED.search(text)
        why = failed.group(1) if failed else ("no 'TEST: BundleIO index[N] Test_result: PASS|FAIL' line (is the runner "
                                              "built with bundle IO, and is the file a .bpte?)")
        raise RunnerOutputError(f"executor_runner did not check the bundled program ({why}). Last output:\n"
                                f"{_tail(text)}")
    result: dict[str, Any] = {"cases": cases, "passed": all(c["passed"] for c in cases)}
    tolerance = _BIO_TOLERANCE.search(text)
    if tolerance:
        result["tolerance"] = {"rtol": float(tolerance.group(1)), "atol": float(tolerance.group(2))}
    return result
