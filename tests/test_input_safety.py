"""Input safety: token ids, token types and masks are checked against the ranges the artifact records, and
float inputs for NaN/Inf, before the native runtime sees them.

What each runtime does without the check (measured here, and asserted below so these tests cannot pass
vacuously): ExecuTorch's int8 `embedding_byte` kernel ET_CHECKs the index and aborts the whole process (SIGABRT);
the fp32 `.pte` fails with error 0x12; LiteRT's EMBEDDING_LOOKUP fails ("index out of bounds"); ONNX Runtime's
Gather fails on 40000 but silently wraps -5 (to id vocab-5) and returns other logits; a NaN pixel comes out as
NaN logits. Bad feeds run in a child process, so an abort fails a test instead of killing the test session:
one child per artifact runs all of its cases and reports each (a case that aborts ends its child, and the next
child carries on from the case after it), so each test still reads its own case's exit status, report and stderr.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import device_runtime
from device_runtime import InputError, NonFiniteInputError, TensorInfo, ValueRangeError
from device_runtime.session import Session

BERT = "tinybert_4l_312d"
VOCAB_MAX = 30521  # bert-base-uncased WordPiece: 30522 ids, inclusive range [0, 30521]
# (format, precision) of every runnable format of the BERT family here; int8 .pte is the one that aborts.
BERT_ARTIFACTS = [("pte", "fp32"), ("pte", "int8"), ("tflite", "fp32"), ("onnx", "fp32")]

# The child: for each case, load, set one element of one input, run; report each case as one JSON line as soon as
# it is done. `unchecked` strips the recorded ranges first and turns the finiteness check off, i.e. what the
# runtime does without this feature. One child runs every case of an artifact (importing the runtime once);
# where a case kills it (the int8 .pte's abort), the next child goes on from the case after it.
CHILD = r"""
import json, sys, traceback
from dataclasses import replace
import numpy as np
import device_runtime
path, cases = sys.argv[1], json.loads(sys.argv[2])
for index, (name, value, unchecked) in enumerate(cases):
    print(json.dumps({"case": index, "started": True}), flush=True)
    try:
        session = device_runtime.load(path, adapt_io=True)
        if unchecked:
            session._inputs = [replace(t, value_range=None) for t in session._inputs]
            session.allow_non_finite = True
        feed = session.example_feed()
        if name != "-":
            arr = feed[name].copy()
            arr.flat[3] = float(value) if np.issubdtype(arr.dtype, np.floating) else int(value)
            feed[name] = arr
        outputs = session.run(None, feed)
        rc, report = 0, {"error": None, "outputs": [o.astype(float).ravel().tolist() for o in outputs]}
    except device_runtime.InputError as exc:
        rc, report = 2, {"error": type(exc).__name__, "message": str(exc)}
    except device_runtime.ExecutionError as exc:
        rc, report = 5, {"error": type(exc).__name__, "message": str(exc)}
    except Exception:  # what an uncaught exception would have been: exit 1, a traceback, no report
        print(traceback.format_exc(), file=sys.stderr, flush=True)
        rc, report = 1, None
    print(json.dumps({"case": index, "rc": rc, "report": report}), flush=True)
"""

Case = tuple  # (input name or "-", value, unchecked)
_RESULTS: dict[tuple[str, Case], tuple[int, dict | None, str]] = {}


def run_children(path, cases) -> None:
    """Run every case of `cases` not yet done on `path`, in as few child processes as the cases allow: one, plus
    one more after each case that kills its child (that case gets the child's exit status and stderr)."""
    pending = [tuple(c) for c in dict.fromkeys(tuple(c) for c in cases) if (str(path), tuple(c)) not in _RESULTS]
    while pending:
        proc = subprocess.run([sys.executable, "-c", CHILD, str(path), json.dumps(pending)],
                              capture_output=True, text=True, timeout=600)
        done, started = {}, None
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("started"):
                    started = record["case"]
                else:
                    done[record["case"]] = record
        for index, record in done.items():
            _RESULTS[(str(path), pending[index])] = (record["rc"], record["report"], proc.stderr)
        if started is None or started in done:  # the child ran to its end
            assert len(done) == len(pending), f"child ended early (rc {proc.returncode}): {proc.stderr[-2000:]}"
            return
        _RESULTS[(str(path), pending[started])] = (proc.returncode, None, proc.stderr)  # the case that killed it
        pending = pending[started + 1:]


def run_child(path, name="-", value=0, unchecked=False, batch=()) -> tuple[int, dict | None, str]:
    """(exit status, report, stderr) of one case, as a child process of its own would give them; the first call
    for an artifact runs `batch` (every case its tests ask for) with it."""
    case = (name, str(value), bool(unchecked))
    run_children(path, [case] + [(n, str(v), bool(u)) for n, v, u in batch])
    return _RESULTS[(str(path), case)]


# Every case the BERT tests run on each artifact, unchecked ones last (they may kill the child).
BERT_CASES = [("input_ids", 40000, False), ("input_ids", -5, False), ("token_type_ids", 2, False),
              ("attention_mask", 2, False), ("-", 0, False), ("input_ids", 0, False), ("input_ids", VOCAB_MAX, False),
              ("token_type_ids", 1, False), ("input_ids", 40000, True), ("input_ids", -5, True),
              ("token_type_ids", 2, True)]
VISION_CASES = [("pixel_values", v, u) for u in (False, True) for v in ("nan", "inf", "-inf")]


def run_bert(path, name="-", value=0, unchecked=False):
    return run_child(path, name, value, unchecked, batch=BERT_CASES)


@pytest.fixture(scope="module")
def bert_artifacts(export_tiny):
    return {f"{fmt}-{prec}": export_tiny(BERT, fmt, prec).path for fmt, prec in BERT_ARTIFACTS}


def _assert_range_error(rc, report, stderr, name, value, index, lo, hi):
    assert rc == 2 and report is not None, f"child did not exit cleanly (rc {rc}): {stderr[-2000:]}"
    assert report["error"] == "ValueRangeError", report
    msg = report["message"]
    assert repr(name) in msg and f"value {value}" in msg and f"index {index}" in msg and f"[{lo}, {hi}]" in msg, msg


@pytest.mark.parametrize("key", [f"{f}-{p}" for f, p in BERT_ARTIFACTS])
def test_out_of_range_token_id_is_a_typed_error_not_an_abort(bert_artifacts, key):
    path = bert_artifacts[key]
    _assert_range_error(*run_bert(path, "input_ids", 40000), "input_ids", 40000, [0, 3], 0, VOCAB_MAX)
    # Without the check: the int8 .pte kills the process with a signal; the others fail inside the runtime.
    rc, report, stderr = run_bert(path, "input_ids", 40000, unchecked=True)
    if key == "pte-int8":
        assert rc < 0 and report is None and "Index out of bounds" in stderr, (rc, report, stderr[-2000:])
    else:
        assert rc == 5 and report["error"] == "ExecutionError", (rc, report, stderr[-2000:])


@pytest.mark.parametrize("key", [f"{f}-{p}" for f, p in BERT_ARTIFACTS])
def test_negative_token_id_is_rejected(bert_artifacts, key):
    path = bert_artifacts[key]
    _assert_range_error(*run_bert(path, "input_ids", -5), "input_ids", -5, [0, 3], 0, VOCAB_MAX)
    rc, report, stderr = run_bert(path, "input_ids", -5, unchecked=True)
    if key == "pte-int8":
        assert rc < 0 and report is None, (rc, report, stderr[-2000:])
    elif key == "onnx-fp32":
        # ONNX Runtime's Gather wraps -5 to id 30517: it "works" and returns another sentence's logits.
        assert rc == 0 and report["error"] is None, (rc, report, stderr[-2000:])
        _, valid, _ = run_bert(path)
        assert not np.allclose(report["outputs"], valid["outputs"])
    else:
        assert rc == 5 and report["error"] == "ExecutionError", (rc, report, stderr[-2000:])


@pytest.mark.parametrize("key", [f"{f}-{p}" for f, p in BERT_ARTIFACTS])
def test_token_type_2_and_mask_2_are_rejected(bert_artifacts, key):
    path = bert_artifacts[key]
    _assert_range_error(*run_bert(path, "token_type_ids", 2), "token_type_ids", 2, [0, 3], 0, 1)
    _assert_range_error(*run_bert(path, "attention_mask", 2), "attention_mask", 2, [0, 3], 0, 1)
    # Without the check a token type of 2 (type_vocab_size is 2) dies, fails or silently computes something.
    rc, report, _ = run_bert(path, "token_type_ids", 2, unchecked=True)
    assert rc != 2 and (report is None or report["error"] != "ValueRangeError")


@pytest.mark.parametrize("key", [f"{f}-{p}" for f, p in BERT_ARTIFACTS])
def test_valid_inputs_still_run_at_the_range_edges(bert_artifacts, key):
    path = bert_artifacts[key]
    for name, value in [("-", 0), ("input_ids", 0), ("input_ids", VOCAB_MAX), ("token_type_ids", 1)]:
        rc, report, stderr = run_bert(path, name, value)
        assert rc == 0 and report["error"] is None, (name, value, rc, report, stderr[-2000:])
        assert np.isfinite(report["outputs"]).all()


def test_ranges_are_recorded_in_the_artifact_and_the_manifest(bert_artifacts, tmp_path):
    from device_runtime.manifest import read_manifest

    expected = {"input_ids": (0, VOCAB_MAX), "attention_mask": (0, 1), "token_type_ids": (0, 1)}
    for key, path in bert_artifacts.items():
        model = read_manifest(Path(path).parent).model
        assert {i["name"]: tuple(i["value_range"]) for i in model["inputs"]} == expected, key
        # Away from its manifest, a .pte (metadata method) and an .onnx (metadata_props) still carry their ranges;
        # a .tflite has no metadata place of ours and falls back to the manifest, so it has none alone.
        alone = tmp_path / key / Path(path).name
        alone.parent.mkdir()
        shutil.copy(path, alone)
        ranges = {t.name: t.value_range for t in device_runtime.load(alone).get_inputs()}
        if key.startswith("tflite"):
            assert set(ranges.values()) == {None}
            with_manifest = device_runtime.load(path).get_inputs()
            assert {t.name: t.value_range for t in with_manifest} == expected
        else:
            assert ranges == expected, key


def test_artifacts_without_recorded_ranges_still_run(bert_artifacts, tmp_path):
    import onnx

    # A foreign ONNX (no metadata_props of ours, no manifest beside it) loads, runs, and checks no ranges.
    model = onnx.load(bert_artifacts["onnx-fp32"])
    del model.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(model, str(foreign))
    session = device_runtime.load(foreign)
    assert all(t.value_range is None for t in session.get_inputs())
    assert np.isfinite(session.run(None, session.example_feed())[0]).all()
    # A .tflite with its manifest removed: runs; a bad id then reaches LiteRT, which fails (no abort there).
    lone = tmp_path / "lone" / "model.tflite"
    lone.parent.mkdir()
    shutil.copy(bert_artifacts["tflite-fp32"], lone)
    lone_cases = [("-", 0, False), ("input_ids", 40000, False)]
    rc, report, _ = run_child(lone, batch=lone_cases)
    assert rc == 0 and report["error"] is None
    rc, report, _ = run_child(lone, "input_ids", 40000, batch=lone_cases)
    assert rc == 5 and report["error"] == "ExecutionError", report


@pytest.fixture(scope="module")
def vision_onnx(export_tiny):
    return export_tiny("mobilevit_xxs", "onnx", "fp32").path


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_pixel_is_rejected(vision_onnx, value):
    rc, report, stderr = run_child(vision_onnx, "pixel_values", value, batch=VISION_CASES)
    assert rc == 2 and report["error"] == "NonFiniteInputError", (rc, report, stderr[-2000:])
    assert "'pixel_values'" in report["message"] and "index [0, 0, 0, 3]" in report["message"]
    assert "allow_non_finite=True" in report["message"]
    # Without the check the runtime happily returns non-finite logits.
    rc, report, _ = run_child(vision_onnx, "pixel_values", value, unchecked=True, batch=VISION_CASES)
    assert rc == 0 and not np.isfinite(report["outputs"]).all()


def test_allow_non_finite_opts_out(vision_onnx):
    session = device_runtime.load(vision_onnx, allow_non_finite=True)
    shape = [d or 1 for d in session.get_inputs()[0].shape]
    image = np.zeros(shape, np.float32)
    image[0, 0, 0, 0] = np.nan
    assert not np.isfinite(session.run(None, {"pixel_values": image})[0]).all()
    session.allow_non_finite = False
    with pytest.raises(NonFiniteInputError):
        session.run(None, {"pixel_values": image})


def test_cli_run_with_a_bad_id_is_a_one_line_error_with_exit_code_2(bert_artifacts, tmp_path):
    path = bert_artifacts["pte-int8"]  # the artifact whose runtime aborts on a bad id
    args = []
    for info in device_runtime.load(path).get_inputs():
        arr = np.ones(info.shape, np.int64)
        if info.name == "input_ids":
            arr[0, 7] = 99999
        np.save(tmp_path / f"{info.name}.npy", arr)
        args += ["--input", f"{info.name}={tmp_path / (info.name + '.npy')}"]
    proc = subprocess.run([sys.executable, "-m", "sdk.cli", "run", str(path), *args],
                          capture_output=True, text=True, timeout=300)
    errors = [l for l in proc.stderr.splitlines() if "error" in l]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(errors) == 1 and "'input_ids'" in errors[0] and "index [0, 7]" in errors[0], errors
    assert f"[0, {VOCAB_MAX}]" in errors[0]


# -- the check itself, on a stub session (no runtime) -------------------------------------------------
class _Stub(Session):
    def __init__(self, inputs):
        super().__init__("stub")
        self._inputs = inputs

    def _execute(self, arrays):
        return arrays


def test_validate_checks_ranges_and_finiteness_vectorised():
    ids = TensorInfo("input_ids", (1, None), np.dtype(np.int32), value_range=(0, 9))
    x = TensorInfo("x", (2, 2), np.dtype(np.float16))
    stub = _Stub([ids, x])
    good = [np.array([[0, 9, 5]], np.int32), np.ones((2, 2), np.float16)]
    stub.run(None, good)
    with pytest.raises(ValueRangeError, match=r"value 10 at index \[0, 2\] \(2 value\(s\) out of range\).*\[0, 9\]"):
        stub.run(None, [np.array([[0, 3, 10, 11]], np.int32), good[1]])
    with pytest.raises(ValueRangeError, match=r"value -1 at index \[0, 1\]"):
        stub.run(None, [np.array([[0, -1, 10]], np.int32), good[1]])
    with pytest.raises(NonFiniteInputError, match=r"'x' has nan at index \[1, 0\]"):
        stub.run(None, [good[0], np.array([[1, 2], [np.nan, np.inf]], np.float16)])
    assert issubclass(ValueRangeError, InputError) and issubclass(NonFiniteInputError, InputError)
    # An empty feed is valid, and malformed recorded ranges are ignored rather than refusing the model.
    stub.run(None, [np.zeros((1, 0), np.int32), good[1]])
    from device_runtime.session import with_value_ranges

    infos = with_value_ranges([replace(ids, value_range=None), x], {"input_ids": ["a", 3], "x": [0, 1]})
    assert [t.value_range for t in infos] == [None, None]  # bad entry; and a float input takes no range
