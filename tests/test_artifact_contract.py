"""The artifact contract: the public API, the versioned manifest tied to the bytes it describes, typed
options and precisions, atomic replacement, error codes and the import layers. Each test here failed on
the code before this contract existed."""
from __future__ import annotations

import ast
import copy
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("device_runtime", "models_zoo", "converters", "sdk")


# -- the public API ----------------------------------------------------------------------------------------
def _readme_python_api_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_api_runs_as_written_twice_in_one_process(tmp_path):
    """README's block, on the tiny variant at fp32 (the same code path, with less of the slow int8 calibration and
    lowering), run twice in one interpreter: `sdk.export` used to turn into a module after its first call."""
    block = _readme_python_api_block().replace("mobilevit_xxs", "mobilevit_xxs-tiny")
    assert 'precision="int8"' in block and "/int8/" in block
    block = block.replace('precision="int8"', 'precision="fp32"').replace("/int8/", "/fp32/")
    # One format, ONNX (the cheapest to build): what this test guards is the block's API (export twice in one
    # process, load, inputs, run, hooks, benchmark), and the .pte and .tflite it names are exported and loaded by
    # the format tests; lowering them here again took most of its minute.
    assert 'formats=["pte", "tflite"]' in block and block.count("/model.pte") == 1
    block = block.replace('formats=["pte", "tflite"]', 'formats=["onnx"]').replace("/model.pte", "/model.onnx")
    assert "sdk.export(" in block and "device_runtime.load(" in block
    script = tmp_path / "readme_block.py"
    script.write_text(f"BLOCK = {block!r}\nfor _ in range(2):\n    exec(compile(BLOCK, 'README', 'exec'), {{}})\n"
                      "import sdk, inspect\nassert callable(sdk.export) and 'formats' in "
                      "str(inspect.signature(sdk.export))\nprint('README OK')\n")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "README OK" in done.stdout
    assert (tmp_path / "out" / "mobilevit_xxs-tiny" / "fp32" / "model.onnx").exists()


def test_public_names_are_the_real_functions():
    import inspect

    import device_runtime
    import sdk
    from sdk.export import api as export_api

    assert sdk.export is export_api.export and sdk.load is device_runtime.load
    assert "precision" in inspect.signature(sdk.export).parameters


# -- the manifest ------------------------------------------------------------------------------------------
def test_manifest_is_versioned_and_holds_the_artifacts_hash(export_tiny):
    from device_runtime import manifest

    result = export_tiny("mobilevit_xxs", "pte", "fp32")
    data = json.loads(result.report_path.read_text())
    assert data["schema"] == manifest.SCHEMA and data["schema_version"] == manifest.SCHEMA_VERSION
    entry = data["artifacts"]["model.pte"]
    assert entry["sha256"] == manifest.sha256_of(result.path) and entry["size_bytes"] == result.path.stat().st_size
    record = manifest.load_entry(result.path)
    assert record.entry.verified is True and record.model["name"] == "mobilevit_xxs-tiny"


def test_a_failed_reexport_keeps_the_passing_entry_and_artifact(tmp_path, monkeypatch):
    from converters import base
    from converters.parity import ParityError
    from device_runtime import manifest
    from sdk.export.api import export
    from test_pipeline import PerturbedConverter

    good = export("mobilevit_xxs", "onnx", "fp32", out_dir=tmp_path, tiny=True)[0]
    before = json.loads(good.report_path.read_text())["artifacts"]["model.onnx"]
    bytes_before = good.path.read_bytes()

    class Miscompiling(PerturbedConverter):
        format = "onnx"

    monkeypatch.setitem(base._CONVERTERS, "onnx", Miscompiling())
    with pytest.raises(ParityError):
        export("mobilevit_xxs", "onnx", "fp32", out_dir=tmp_path, tiny=True)
    after = json.loads(good.report_path.read_text())
    assert after["artifacts"]["model.onnx"] == before and good.path.read_bytes() == bytes_before
    assert after["failed"][-1]["error"] == "ParityError" and after["failed"][-1]["parity"]["passed"] is False
    manifest.load_entry(good.path)  # still matches its hash


def test_the_entry_is_written_only_once_the_artifact_is_in_place(tmp_path, monkeypatch):
    from device_runtime import manifest
    from sdk.export.api import export

    seen = []
    real = manifest.record_artifact

    def record(folder, model, entry):
        artifact = Path(folder) / entry.file
        seen.append(artifact.exists() and manifest.sha256_of(artifact) == entry.sha256)
        return real(folder, model, entry)

    monkeypatch.setattr(manifest, "record_artifact", record)
    export("mobilevit_xxs", "onnx", "fp32", out_dir=tmp_path, tiny=True)
    assert seen == [True]


def test_sequence_length_gets_its_own_folder_and_preprocessing(tmp_path, capsys):
    from sdk.cli.app import main
    from sdk.export.api import export

    default = export("tinybert_4l_312d", "onnx", "fp32", out_dir=tmp_path, tiny=True)[0]
    short = export("tinybert_4l_312d", "onnx", "fp32", out_dir=tmp_path, tiny=True, seq_len=16)[0]
    assert default.path.parent.name == "fp32" and short.path.parent.name == "fp32-seq16"
    seq_lens = {json.loads(r.report_path.read_text())["model"]["preprocessing"]["seq_len"] for r in (default, short)}
    assert seq_lens == {32, 16}  # the tiny default is 32; neither export rewrote the other's preprocessing
    for result in (default, short):
        assert main(["run", str(result.path), "--text", "A gripping film."]) == 0
    assert "pocketformer: error" not in capsys.readouterr().err


def test_an_artifact_modified_since_export_is_refused_unless_trusted(export_tiny, tmp_path, capsys):
    import shutil

    from sdk.cli.app import main

    result = export_tiny("mobilevit_xxs", "tflite", "fp32")
    folder = tmp_path / "copy"
    shutil.copytree(result.path.parent, folder)
    artifact = folder / result.path.name
    with open(artifact, "ab") as fh:
        fh.write(b"\0" * 16)
    feed = tmp_path / "x.npy"
    import numpy as np

    np.save(feed, np.zeros((1, 3, 64, 64), np.float32))
    for command in (["run", str(artifact), "--input", f"pixel_values={feed}"], ["bench", str(artifact), "--runs", "1"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "modified since export" in err and "--trust" in err
    assert main(["bench", str(artifact), "--runs", "2", "--warmup", "0", "--trust", "--quiet"]) == 0


def test_an_old_or_foreign_report_is_refused_with_the_fix(tmp_path):
    from device_runtime import manifest

    (tmp_path / "report.json").write_text(json.dumps({"model": {}, "artifacts": {}}))
    with pytest.raises(manifest.ManifestError, match="re-export"):
        manifest.load_entry(tmp_path / "model.pte")
    (tmp_path / "report.json").write_text(json.dumps({"schema": manifest.SCHEMA, "schema_version": 99}))
    with pytest.raises(manifest.ManifestError, match="schema_version 99"):
        manifest.read_manifest(tmp_path)


# -- options and precisions --------------------------------------------------------------------------------
def test_an_unknown_option_is_an_error_naming_the_valid_ones(tmp_path):
    from converters import UnknownOptionError
    from sdk.export.api import export

    with pytest.raises(UnknownOptionError, match=r"int8io.*int8_io"):
        export("mobilevit_xxs", ["tflite"], "int8", out_dir=tmp_path, tiny=True, int8io=True)
    assert not any(tmp_path.iterdir())  # refused before any work


def test_every_converter_option_is_a_typed_frozen_field_with_a_cli_flag():
    import dataclasses

    from converters import get_converter, list_converters
    from converters.base import option_flag
    from sdk.cli.app import build_parser

    parser, dests = build_parser()
    export_help = parser._subparsers._group_actions[0].choices["export"].format_help()
    for fmt in list_converters():
        options = get_converter(fmt).Options
        assert dataclasses.is_dataclass(options) and options.__dataclass_params__.frozen, fmt
        for f in dataclasses.fields(options):
            assert f.name in dests, (fmt, f.name)
            assert option_flag(f) in export_help, (fmt, option_flag(f))
            assert f.metadata.get("help"), f"{fmt}.{f.name} has no help text"


def test_precision_is_one_value_type():
    from models_zoo import Precision, get_model

    bert, vision = get_model("tinybert_4l_312d-tiny"), get_model("mobilevit_xxs-tiny")
    p = bert.resolve_precision("int8")
    assert p == "int8-dynamic" and p.requested == "int8" and p.weight_bits == 8 and p.activations == "dynamic"
    assert vision.resolve_precision("int8").needs_calibration and not p.needs_calibration
    assert Precision.of("int4-weight").is_quantized and not Precision.of("fp16").is_quantized
    assert json.dumps({"p": p}) == '{"p": "int8-dynamic"}'
    with pytest.raises(ValueError, match="unknown precision"):
        Precision.of("int7")
    with pytest.raises(AttributeError):
        p.weight_bits = 4


def test_no_code_reads_a_precision_by_its_spelling():
    """Meaning comes from Precision's properties, not from `startswith("int")` scattered through the code."""
    offenders = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"""precision[\w\[\]"'.]*\.startswith\(""", line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_rewrite_false_leaves_the_callers_module_untouched(tmp_path):
    import torch

    from converters import get_converter, resolve_precision
    from models_zoo import get_model

    spec = get_model("tinybert_4l_312d-tiny")
    module = spec.build()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    types_before = [type(m) for m in module.modules()]
    converter = get_converter("pte")
    converter.convert(module, spec, resolve_precision(spec, "int8", converter), spec.calibration_inputs(),
                      tmp_path / "model.pte", rewrite=False)
    assert [type(m) for m in module.modules()] == types_before
    after = module.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


# -- atomic replacement ------------------------------------------------------------------------------------
_REPLACE_CHILD = textwrap.dedent('''
    import os, signal, sys, time
    from pathlib import Path
    from device_runtime import atomic

    # Python's own Ctrl-C handler even if the test runner's process ignores SIGINT (a child inherits SIG_IGN).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    final = Path(sys.argv[1])
    real_replace = os.replace
    calls = []

    def slow_replace(src, dst):
        real_replace(src, dst)
        calls.append(dst)
        if len(calls) == 1:          # the old folder has just been moved aside
            print("ASIDE", flush=True)
            time.sleep(60)

    atomic.os.replace = slow_replace
    with atomic.atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "weights.bin").write_bytes(b"new" * 1000)
''')


def test_sigint_during_a_folder_replacement_leaves_the_old_one_whole(tmp_path):
    final = tmp_path / "model.mlpackage"
    final.mkdir()
    (final / "weights.bin").write_bytes(b"old" * 1000)
    (final / "Manifest.json").write_text("{}")
    child = subprocess.Popen([sys.executable, "-c", _REPLACE_CHILD, str(final)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.stdout.readline().strip() == "ASIDE"
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode != 0 and "KeyboardInterrupt" in err
    assert sorted(p.name for p in final.iterdir()) == ["Manifest.json", "weights.bin"]
    assert (final / "weights.bin").read_bytes() == b"old" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.mlpackage"]  # no aside or temporary left


def test_a_replacement_killed_outright_is_recovered_by_the_next_one(tmp_path):
    from device_runtime import atomic

    final = tmp_path / "bundle"
    final.mkdir()
    (final / "a").write_text("old")
    os.replace(final, tmp_path / f"{atomic.ASIDE_PREFIX}bundle")  # what a SIGKILL between the renames leaves
    atomic.recover_aside(final)
    assert (final / "a").read_text() == "old"
    with atomic.atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("new")
    assert (final / "a").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_tunes_link_is_replaced_atomically(tmp_path):
    from device_runtime import atomic

    (tmp_path / "a.pte").write_bytes(b"a")
    (tmp_path / "b.pte").write_bytes(b"b")
    link = tmp_path / "best.pte"
    atomic.symlink(link, tmp_path / "a.pte")
    atomic.symlink(link, tmp_path / "b.pte")
    assert link.is_symlink() and link.read_bytes() == b"b" and not os.path.isabs(os.readlink(link))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pte", "b.pte", "best.pte"]


# -- errors ------------------------------------------------------------------------------------------------
def test_every_typed_error_has_one_root_and_an_exit_code():
    import device_runtime
    from converters import ConversionError, UnsupportedError
    from converters.parity import ParityError
    from device_runtime.errors import PocketformerError
    from models_zoo import UnknownModelError, WeightsError

    codes = {ParityError: 1, UnknownModelError: 2, WeightsError: 2, device_runtime.ShapeError: 2,
             UnsupportedError: 3, device_runtime.BackendUnavailableError: 3, ConversionError: 4,
             device_runtime.ExecutionError: 5}
    for cls, code in codes.items():
        assert issubclass(cls, PocketformerError) and cls.exit_code == code, cls


def test_a_bug_is_not_reported_as_bad_input(monkeypatch, capsys):
    import sdk.cli.app

    def buggy(args):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(sdk.cli.app, "cmd_zoo_list", buggy)
    assert sdk.cli.app.main(["zoo", "list"]) == 70
    err = capsys.readouterr().err
    assert "internal error: ValueError" in err and "test_artifact_contract.py" in err and "--verbose" in err


# -- layers and rooms --------------------------------------------------------------------------------------
# What each layer may import: the bottom two import neither converters nor sdk; converters never import sdk.
ALLOWED = {"device_runtime": {"device_runtime"}, "models_zoo": {"models_zoo", "device_runtime"},
           "converters": {"converters", "models_zoo", "device_runtime"}, "sdk": set(PACKAGES)}


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from pkg import submodule` depends on the submodule too
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def test_no_upward_import_and_no_cycle_between_modules():
    upward, graph = [], {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            deps = graph.setdefault(module, set())
            for line, name in _imports(path):
                top = name.split(".")[0]
                if top in PACKAGES and top not in ALLOWED[package]:
                    upward.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
                if top in PACKAGES:
                    deps.add(name)
    assert not upward, "\n".join(upward)
    # A cycle between two modules that import each other at module level or in functions alike.
    modules = set(graph)
    resolved = {m: {d if d in modules else d.rsplit(".", 1)[0] for d in deps} & modules - {m}
                for m, deps in graph.items()}
    pairs = sorted((a, b) for a in resolved for b in resolved[a] if a < b and a in resolved.get(b, set())
                   and not (a.startswith(b + ".") or b.startswith(a + ".")))
    assert not pairs, f"modules importing each other: {pairs}"


def test_no_source_file_is_over_500_lines():
    long = [f"{p.relative_to(ROOT)}: {n}" for package in (*PACKAGES, "benchmarks", "scripts")
            for p in (ROOT / package).rglob("*.py") if (n := len(p.read_text().splitlines())) > 500]
    assert not long, long


# The SDK's own rooms, bottom to top: a subpackage imports only from its own layer's package or lower ones (the
# CLI is the top; `report` reads what every capability writes; `export` is what the others build on).
SDK_LAYERS = [{"console"}, {"export"}, {"compress", "measure"}, {"device", "serve", "sweep"}, {"report"}, {"cli"}]


def _sdk_room(path: Path) -> str | None:
    parts = path.relative_to(ROOT / "sdk").parts
    return parts[0] if len(parts) > 1 else None


def test_sdk_rooms_import_only_from_lower_layers():
    layer = {room: i for i, rooms in enumerate(SDK_LAYERS) for room in rooms}
    rooms = {p.name for p in (ROOT / "sdk").iterdir() if (p / "__init__.py").exists()}
    assert rooms == set(layer), f"every sdk subpackage has a layer: {sorted(rooms ^ set(layer))}"
    upward = []
    for path in (ROOT / "sdk").rglob("*.py"):
        room = _sdk_room(path)
        for line, name in _imports(path):
            parts = name.split(".")
            if room and parts[0] == "sdk" and len(parts) > 1 and parts[1] in layer and parts[1] != room \
                    and layer[parts[1]] >= layer[room]:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {name} (layer {layer[parts[1]]} >= "
                              f"{room}'s {layer[room]})")
    assert not upward, "\n".join(upward)


def test_no_module_imports_another_modules_private_names():
    """A name with a leading underscore is its module's own: another module (a test included) that needs it means
    the name should be public, or the code should move."""
    private = []
    for path in [p for package in (*PACKAGES, "tests", "benchmarks") for p in (ROOT / package).rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                private += [f"{path.relative_to(ROOT)}:{node.lineno} from {node.module} import {a.name}"
                            for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            elif isinstance(node, ast.Import):
                private += [f"{path.relative_to(ROOT)}:{node.lineno} import {a.name}" for a in node.names
                            if any(part.startswith("_") and not part.startswith("__") for part in a.name.split("."))]
    assert not private, "\n".join(private)


def test_every_package_says_what_it_owns():
    silent = [str(p.relative_to(ROOT)) for package in PACKAGES for p in (ROOT / package).rglob("__init__.py")
              if len((ast.get_docstring(ast.parse(p.read_text())) or "").split()) < 8]
    assert not silent, f"packages without a docstring saying what they own: {silent}"


def test_sdk_export_stays_the_function_whatever_is_imported():
    """`sdk.export` is the function and `sdk/export/` a package: importing the package binds it on `sdk` once, and
    `sdk/__init__.py` binds the function after that. Every submodule of sdk and converters imported, in a fresh
    interpreter, must leave it so."""
    code = ("import importlib, pkgutil, inspect, sdk, converters\n"
            "for pkg in (sdk, converters):\n"
            "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
            "        if not m.name.endswith('__main__'):\n"
            "            importlib.import_module(m.name)\n"
            "from sdk.export import api\n"
            "assert inspect.isfunction(sdk.export) and sdk.export is api.export, sdk.export\n"
            "print('OK')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-3000:]


def test_a_coreml_predict_failure_is_an_execution_error_not_bad_input():
    """Core ML's predict raising (a model the device cannot run) used to surface as InputError, exit 2."""
    import types

    from device_runtime import ExecutionError, InputError
    from device_runtime.backends import coreml

    session = object.__new__(coreml.CoreMLSession)
    session.path, session._inputs, session._outputs, session._image_inputs = "m.mlpackage", [], [], set()

    def predict(feed):
        raise RuntimeError("Error computing NN outputs")

    session._model = types.SimpleNamespace(predict=predict)
    with pytest.raises(ExecutionError, match="coreml failed.*Error computing NN outputs") as info:
        session._execute([])
    assert not isinstance(info.value, InputError) and info.value.exit_code == 5
