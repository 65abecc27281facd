"""Ascend OM (converters/ascend/om.py, device_runtime/backends/ascend.py).

Nothing here has CANN or an Ascend NPU: no test produces or runs an .om. What is tested is everything around
ATC: the ATC-ready ONNX of each family (exported at opset 11, checked, run on ONNX Runtime against PyTorch),
the operator pre-check, the atc command builder and its refusals, the --atc-script folder, atc error
translation with a fake `atc` that only prints a log, and the OM runtime adapters with stand-in modules.
"""
from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import device_runtime  # noqa: E402
from converters import UnsupportedError, get_converter  # noqa: E402
from converters.ascend.aipp import aipp_config, aipp_reference  # noqa: E402
from converters.ascend.atc import (ATC_MAX_OPSET, AtcError, AtcOptionError, AtcOptions, find_atc,  # noqa: E402
                                   translate_atc_log)
from converters.ascend.precheck import UnsupportedOperatorError, load_op_table, precheck  # noqa: E402
from device_runtime.backends.ascend import OM_HEADER_LEN, OM_MAGIC_BYTES, read_om_header  # noqa: E402
from models_zoo import InputSpec, ModelSpec, Tolerance, get_model  # noqa: E402
from models_zoo import family_representatives  # noqa: E402
from conftest import SUITE_MODELS

FAMILIES = family_representatives(prefer=SUITE_MODELS)
# A BERT-family model with token types (DistilBERT has none), so all three inputs get a sequence profile.
BERT = next(m for m in FAMILIES if get_model(m).int8_scheme == "dynamic" and get_model(m).use_token_type_ids)
VISION = next(m for m in FAMILIES if get_model(m).int8_scheme == "static")
SOC = "Ascend310P3"
CONVERTER = get_converter("om")


@pytest.fixture(scope="module")
def built():
    """(module, spec, feeds) per tiny model, built once for this file."""
    cache = {}

    def get(name):
        if name not in cache:
            spec = get_model(name, tiny=True)
            cache[name] = (spec.build(), spec, spec.sample_inputs())
        return cache[name]

    return get


@pytest.fixture
def no_cann(monkeypatch, tmp_path):
    """A PATH without atc and no ASCEND_TOOLKIT_HOME, whatever the machine has."""
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)


def _fake_atc(folder: Path, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    atc = folder / "atc"
    atc.write_text("#!/bin/sh\n" + body)
    atc.chmod(atc.stat().st_mode | stat.S_IEXEC)
    return atc


# -- the ATC-ready ONNX of every family --------------------------------------------------------------
@pytest.mark.parametrize("model", FAMILIES)
def test_atc_ready_onnx_passes_precheck_at_opset_11(built, model, tmp_path):
    module, spec, feeds = built(model)
    folder = tmp_path / "model.atc"
    conversion = CONVERTER.convert(module, spec, "fp16", feeds, folder, atc_script=True, soc_version=SOC)
    info = conversion.details["atc_onnx"]
    assert info["opset"] == 11 and info["exporter"] == "torchscript"
    assert info["precheck"]["passed"], info["precheck"]["unsupported"]
    exported = onnx.load(str(folder / "model.onnx"))
    onnx.checker.check_model(exported, full_check=True)
    assert exported.opset_import[0].version == 11
    assert all(n.domain in ("", "ai.onnx") for n in exported.graph.node)
    assert info["parity"]["max_abs_err"] <= spec.tolerance("fp32").atol  # ONNX Runtime vs PyTorch
    # The folder a CANN host runs: no .om anywhere, and nothing claims one.
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "atc.sh", "atc_job.json", "model.onnx"]
    assert not list(folder.glob("*.om")) and conversion.details["atc"] == {
        "command": conversion.details["atc"]["command"], "ran": False, "om_produced": False}
    script = (folder / "atc.sh").read_text()
    assert os.access(folder / "atc.sh", os.X_OK)
    subprocess.run(["bash", "-n", str(folder / "atc.sh")], check=True)
    assert "--framework=5" in script and f"--soc_version={SOC}" in script
    assert ("--input_format=ND" if get_model(model).int8_scheme == "dynamic"
            else "--input_format=NCHW") in script
    manifest = json.loads((folder / "atc_job.json").read_text())
    assert manifest["atc_argv"][0] == "atc" and manifest["precision_mode"] == "allow_fp32_to_fp16"


def test_bert_sequence_profiles(built, tmp_path):
    module, spec, feeds = built(BERT)
    conversion = CONVERTER.convert(module, spec, "fp16", feeds, tmp_path / "m.atc", atc_script=True,
                                   soc_version="Ascend310B1", dynamic_dims="16,32,64")
    command = conversion.details["atc"]["command"]
    assert "--input_shape=input_ids:1,-1;attention_mask:1,-1;token_type_ids:1,-1" in command
    assert "--dynamic_dims=16,16,16;32,32,32;64,64,64" in command
    profiles = conversion.details["atc_onnx"]["parity"]["profiles"]
    assert [p["sequence"] for p in profiles] == [16, 32, 64]
    assert max(p["max_abs_err"] for p in profiles) <= spec.tolerance("fp32").atol


SEQ_LENS = (16, 32, 64, 128)


def test_pipeline_seq_lens_write_one_atc_command_with_a_profile_per_length(no_cann, tmp_path):
    """`export --seq-lens` for Ascend: one ATC-ready ONNX with a dynamic sequence axis that passes the pre-check
    and matches PyTorch at every length, one atc command with a --dynamic_dims profile per length, and the
    manifest entry listing the lengths (what device_runtime routes by)."""
    from sdk.export.api import export

    [result] = export(BERT, "om", "fp16", out_dir=tmp_path, tiny=True, seq_lens=",".join(map(str, SEQ_LENS)),
                      atc_script=True, soc_version=SOC)
    folder = result.path
    assert folder.name == "model-seq16_32_64_128.atc" and folder.parent.name == "fp16"  # beside model.atc
    argv = json.loads((folder / "atc_job.json").read_text())["atc_argv"]
    assert argv == ["atc", "--framework=5", "--model=model.onnx", "--output=model", f"--soc_version={SOC}",
                    "--input_shape=input_ids:1,-1;attention_mask:1,-1;token_type_ids:1,-1", "--input_format=ND",
                    "--precision_mode=allow_fp32_to_fp16", "--log=error",
                    "--dynamic_dims=16,16,16;32,32,32;64,64,64;128,128,128"]
    assert "--dynamic_dims=16,16,16;32,32,32;64,64,64;128,128,128" in (folder / "atc.sh").read_text()
    assert "16, 32, 64, 128" in (folder / "README.md").read_text()
    exported = onnx.load(str(folder / "model.onnx"))
    onnx.checker.check_model(exported, full_check=True)
    for graph_input in exported.graph.input:  # the sequence axis is symbolic, the batch axis fixed
        batch, sequence = graph_input.type.tensor_type.shape.dim
        assert batch.dim_value == 1 and sequence.dim_param and not sequence.dim_value, graph_input
    info = result.details["atc_onnx"]
    assert info["precheck"]["passed"] and info["opset"] == 11, info["precheck"]["unsupported"]
    assert precheck(exported).passed
    assert [p["sequence"] for p in info["parity"]["profiles"]] == list(SEQ_LENS)
    assert info["parity"]["max_abs_err"] <= get_model(BERT, tiny=True).tolerance("fp32").atol
    report = json.loads((folder.parent / "report.json").read_text())
    entry = report["artifacts"][folder.name]
    assert entry["details"]["buckets"]["lengths"] == list(SEQ_LENS) and entry["options"]["seq_lens"]
    assert entry["parity"]["passed"] is None and result.passed is None  # nothing ran an .om here


def test_seq_lens_with_atc_on_path_runs_it_once(built, tmp_path, monkeypatch):
    argv_file = tmp_path / "argv"
    om = _fake_om(tmp_path / "fake.om")
    _fake_atc(tmp_path / "bin", f'echo "$@" >> {argv_file}\nfor a in "$@"; do case $a in --output=*) '
                                f'cp {om} "${{a#--output=}}.om";; esac; done\nexit 0\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    module, spec, feeds = built(BERT)
    assert CONVERTER.artifact_name(seq_lens="32,64") == "model-seq32_64.om"
    conversion = CONVERTER.convert(module, spec, "fp16", feeds, tmp_path / "out" / "model-seq32_64.om",
                                   soc_version=SOC, seq_lens="32,64")
    [call] = argv_file.read_text().splitlines()  # one atc run for every length
    assert "--dynamic_dims=32,32,32;64,64,64" in call and "--input_format=ND" in call
    assert conversion.path.read_bytes() == om.read_bytes() and conversion.details["atc"]["ran"]
    assert conversion.details["buckets"]["lengths"] == [32, 64]


def test_vision_batch_profiles_and_aipp(built, tmp_path):
    module, spec, feeds = built(VISION)
    folder = tmp_path / "m.atc"
    conversion = CONVERTER.convert(module, spec, "fp16", feeds, folder, atc_script=True, soc_version="Ascend910B3",
                                   dynamic_batch_size="1,2,4", aipp=True)
    command = conversion.details["atc"]["command"]
    assert "--dynamic_batch_size=1,2,4" in command and "--insert_op_conf=aipp.cfg" in command
    assert f"--input_shape=pixel_values:-1,3,{spec.image_size},{spec.image_size}" in command
    assert [p["batch"] for p in conversion.details["atc_onnx"]["parity"]["profiles"]] == [1, 2, 4]
    assert (folder / "aipp.cfg").is_file()


def test_aipp_config_computes_the_spec_normalisation():
    for name in (VISION, next(m for m in FAMILIES if m != VISION and get_model(m).int8_scheme == "static")):
        prep = get_model(name, tiny=True).preprocessing()
        height, width = prep["size"]
        image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        expected = ((image / 255.0 - np.array(prep["mean"])) / np.array(prep["std"])).transpose(2, 0, 1)[None]
        np.testing.assert_allclose(aipp_reference(image, aipp_config(prep)), expected, atol=1e-4)


# -- the operator pre-check ----------------------------------------------------------------------------
def test_op_table_names_its_source():
    table = load_op_table()
    assert table["sources"] and all(s["url"].startswith("https://") for s in table["sources"])
    assert table["max_opset"] == ATC_MAX_OPSET
    assert table["operators"]["LayerNormalization"] == [17, 18]
    assert table["operators"]["Softmax"][0] <= 11 <= table["operators"]["Softmax"][1]


def _grid_sample_onnx(path: Path, opset: int = 16):
    import torch

    class Warp(torch.nn.Module):
        def forward(self, image, grid):
            return torch.nn.functional.grid_sample(image, grid, align_corners=False)

    args = (torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8, 2) * 2 - 1)
    torch.onnx.export(Warp(), args, str(path), dynamo=False, opset_version=opset, input_names=["image", "grid"])
    return onnx.load(str(path))


def test_precheck_names_an_unsupported_op(tmp_path):
    report = precheck(_grid_sample_onnx(tmp_path / "warp.onnx"))
    assert not report.passed
    [bad] = report.unsupported
    assert bad.op_type == "GridSample" and bad.opset == 16 and bad.count == 1
    assert "GridSample" in bad.describe() and bad.rewrite  # a known rewrite is offered


def test_precheck_opset_range_and_foreign_domains():
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["h"], name="relu"),
                               helper.make_node("Gelu", ["h"], ["g"], name="gelu"),
                               helper.make_node("FusedMatMul", ["g", "g"], ["y"], name="fused",
                                                domain="com.microsoft")],
                              "g", [x], [y])
    opsets = [helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    report = precheck(model)
    by_op = {u.op_type: u for u in report.unsupported}
    assert set(by_op) == {"Relu", "Gelu", "FusedMatMul"}
    assert "8..18" in by_op["Relu"].reason                      # opset 20 is past ATC's parsers
    assert "opset" in by_op["Gelu"].rewrite                     # Gelu: export at opset <= 18
    assert by_op["FusedMatMul"].domain == "com.microsoft" and "unoptimised" in by_op["FusedMatMul"].rewrite


@dataclass(frozen=True)
class _WarpSpec(ModelSpec):
    """A one-op model that contains an operator ATC cannot parse (GridSample)."""

    name: str = "warp"
    family: str = "test"
    task: str = "image-warp"
    output_names: tuple = ("warped",)
    tolerances: dict = None

    def _build(self):
        import torch

        class Warp(torch.nn.Module):
            def forward(self, image, grid):
                return torch.nn.functional.grid_sample(image, grid, align_corners=False)

        return Warp()

    def input_specs(self):
        return (InputSpec("image", (1, 3, 8, 8), "float32"), InputSpec("grid", (1, 8, 8, 2), "float32"))

    def _sample_feeds(self):
        rng = np.random.default_rng(0)
        return [{"image": rng.random((1, 3, 8, 8), dtype=np.float32),
                 "grid": (rng.random((1, 8, 8, 2), dtype=np.float32) * 2 - 1)}]

    def tolerance(self, precision):
        return Tolerance(atol=1e-4)

    def preprocessing(self):
        return {"kind": "raw"}


def test_converter_fails_before_atc_with_the_op_named(tmp_path, monkeypatch):
    calls = tmp_path / "atc_calls"
    _fake_atc(tmp_path / "bin", f'echo "$@" >> {calls}\nexit 0\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    spec = _WarpSpec()
    with pytest.raises(UnsupportedOperatorError, match="GridSample") as info:
        CONVERTER.convert(spec.build(), spec, "fp16", spec.sample_inputs(), tmp_path / "model.om", opset=16,
                          soc_version=SOC)
    assert "E19010" in str(info.value) and info.value.report.unsupported[0].op_type == "GridSample"
    assert not calls.exists()  # atc never ran


# -- the atc command builder ---------------------------------------------------------------------------
IMAGE = {"pixel_values": (1, 3, 224, 224)}
TOKENS = {"input_ids": (1, 128), "attention_mask": (1, 128)}
DYN_TOKENS = {"input_ids": (1, -1), "attention_mask": (1, -1)}
BASE = ["atc", "--framework=5", "--model=m.onnx", "--output=out/m"]


@pytest.mark.parametrize("kwargs, expected", [
    (dict(input_shape=IMAGE),
     ["--soc_version=Ascend310P3", "--input_shape=pixel_values:1,3,224,224", "--input_format=NCHW",
      "--precision_mode=allow_fp32_to_fp16", "--log=error"]),
    (dict(input_shape=TOKENS, input_format="ND", soc_version="Ascend310B1", precision_mode="must_keep_origin_dtype",
          log="info"),
     ["--soc_version=Ascend310B1", "--input_shape=input_ids:1,128;attention_mask:1,128", "--input_format=ND",
      "--precision_mode=must_keep_origin_dtype", "--log=info"]),
    (dict(input_shape=IMAGE, insert_op_conf="aipp.cfg", precision_mode="force_fp16"),
     ["--soc_version=Ascend310P3", "--input_shape=pixel_values:1,3,224,224", "--input_format=NCHW",
      "--precision_mode=force_fp16", "--log=error", "--insert_op_conf=aipp.cfg"]),
    (dict(input_shape={"pixel_values": (-1, 3, 224, 224)}, dynamic_batch_size=(1, 4, 8), soc_version="Ascend910B3"),
     ["--soc_version=Ascend910B3", "--input_shape=pixel_values:-1,3,224,224", "--input_format=NCHW",
      "--precision_mode=allow_fp32_to_fp16", "--log=error", "--dynamic_batch_size=1,4,8"]),
    (dict(input_shape={"pixel_values": (-1, 3, 224, 224)}, dynamic_batch_size=(1, 2), insert_op_conf="aipp.cfg"),
     ["--soc_version=Ascend310P3", "--input_shape=pixel_values:-1,3,224,224", "--input_format=NCHW",
      "--precision_mode=allow_fp32_to_fp16", "--log=error", "--insert_op_conf=aipp.cfg", "--dynamic_batch_size=1,2"]),
    (dict(input_shape=DYN_TOKENS, input_format="ND", dynamic_dims=((32, 32), (128, 128)), log="null"),
     ["--soc_version=Ascend310P3", "--input_shape=input_ids:1,-1;attention_mask:1,-1", "--input_format=ND",
      "--precision_mode=allow_fp32_to_fp16", "--log=null", "--dynamic_dims=32,32;128,128"]),
    (dict(input_shape={"input_ids": (-1, 128), "attention_mask": (-1, 128)}, input_format="ND",
          dynamic_batch_size=(1, 16)),
     ["--soc_version=Ascend310P3", "--input_shape=input_ids:-1,128;attention_mask:-1,128", "--input_format=ND",
      "--precision_mode=allow_fp32_to_fp16", "--log=error", "--dynamic_batch_size=1,16"]),
])
def test_command_builder(kwargs, expected):
    options = AtcOptions(**{"model": "m.onnx", "output": "out/m", "soc_version": SOC, **kwargs})
    assert options.argv() == BASE + expected
    assert options.shell().startswith("atc --framework=5 ")


@pytest.mark.parametrize("kwargs, message", [
    (dict(input_shape=DYN_TOKENS, input_format="ND", dynamic_dims=((32, 32), (64, 64)), dynamic_batch_size=(1, 2)),
     "mutually exclusive"),
    (dict(input_shape=TOKENS, input_format="ND", insert_op_conf="aipp.cfg"), "AIPP"),
    (dict(input_shape={"x": (1, 1, 28, 28)}, insert_op_conf="aipp.cfg"), "3 channels"),
    (dict(input_shape=IMAGE, soc_version="Ascend999"), "unknown --soc_version"),
    (dict(input_shape=IMAGE, soc_version=""), "required"),
    (dict(input_shape=IMAGE, input_format="NHWC"), "TensorFlow"),
    (dict(input_shape=IMAGE, precision_mode="fp16_please"), "precision_mode"),
    (dict(input_shape=IMAGE, log="verbose"), "--log"),
    (dict(input_shape={"pixel_values": (-1, 3, 224, 224)}), "E10011"),
    (dict(input_shape={"pixel_values": (-1, 3, -1, 224)}, dynamic_batch_size=(1, 2)), "batch axis"),
    (dict(input_shape={"pixel_values": (-1, 3, 224, 224)}, dynamic_dims=((1,), (2,))), "ND"),
    (dict(input_shape=DYN_TOKENS, input_format="ND", dynamic_dims=((32, 32),)), "2..100"),
    (dict(input_shape={"pixel_values": (-1, 3, 224, 224)}, dynamic_batch_size=tuple(range(1, 102))), "2..100"),
    (dict(input_shape=DYN_TOKENS, input_format="ND", dynamic_dims=((32, 32), (32, 32))), "duplicate"),
    (dict(input_shape=DYN_TOKENS, input_format="ND", dynamic_dims=((32,), (64,))), "one value per -1"),
    (dict(input_shape=TOKENS, input_format="ND", dynamic_dims=((32,), (64,))), "E10040"),
    (dict(input_shape={"pixel_values": (0, 3, 224, 224)}), "positive"),
    (dict(input_shape={}), "empty"),
    (dict(input_shape=IMAGE, output="out/m.om"), "appends .om"),
])
def test_command_builder_refuses_invalid_combinations(kwargs, message):
    options = AtcOptions(**{"model": "m.onnx", "output": "out/m", "soc_version": SOC, **kwargs})
    with pytest.raises(AtcOptionError, match=message):
        options.argv()


@pytest.mark.parametrize("model, options, message", [
    (BERT, dict(aipp=True), "AIPP"),
    (BERT, dict(dynamic_dims="32,64", dynamic_batch_size="1,2"), "mutually exclusive"),
    (VISION, dict(dynamic_dims="32,64"), "dynamic axes"),
    (VISION, dict(soc_version=None), "required"),
    (VISION, dict(opset=19), "opset 19"),
    (VISION, dict(precision_mode="force_fp16"), "--precision is fp32"),  # fp32 label, fp16 arithmetic
    (VISION, dict(dynamic_batch_size="4"), "2..100"),
    (BERT, dict(seq_lens="16-128"), "not a range"),
    (BERT, dict(seq_lens="16,32", dynamic_dims="16,32"), "give one"),
    (BERT, dict(seq_lens="8,16"), "add 32"),  # the tiny variant's samples are 32 tokens
    (BERT, dict(seq_lens="32"), "2..100"),  # one length is a static shape
])
def test_invalid_options_refused_before_anything_runs(built, model, options, message, tmp_path, monkeypatch):
    calls = tmp_path / "atc_calls"
    _fake_atc(tmp_path / "bin", f'echo "$@" >> {calls}\nexit 0\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    module, spec, feeds = built(model)
    kwargs = {"soc_version": SOC, **options}
    precision = "fp32" if "precision_mode" in options else "fp16"
    with pytest.raises(UnsupportedError, match=message):
        CONVERTER.convert(module, spec, precision, feeds, tmp_path / "model.om", **kwargs)
    assert not calls.exists() and not list(tmp_path.rglob("*.onnx"))  # refused before export and atc
    assert CONVERTER.unsupported_reason(spec, precision, **kwargs) is not None


# -- running atc (a fake atc that only prints a log) --------------------------------------------------
ATC_FAILURE_LOG = """ATC start working now, please wait for a moment.
ATC run failed, Please check the detail log, Try 'atc --help' for more information
E19010: No parser is registered for Op [/warp/GridSample, optype [ai.onnx::16::GridSample]].
        Solution: Check the version of the installation package and reinstall the package.
E10001: Value [Ascend31] for parameter [--soc_version] is invalid. Reason: not supported.
W11001: High-priority service of op[PartitionedCall] is invalid.
"""


def test_atc_error_codes_are_translated(built, tmp_path, monkeypatch):
    argv_file = tmp_path / "argv"
    log = tmp_path / "fake_log.txt"
    log.write_text(ATC_FAILURE_LOG)
    _fake_atc(tmp_path / "bin", f'echo "$@" > {argv_file}\ncat {log}\nexit 1\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    assert find_atc() == str(tmp_path / "bin" / "atc")
    module, spec, feeds = built(BERT)
    assert CONVERTER.unsupported_reason(spec, "fp16") is None  # atc is on PATH
    with pytest.raises(AtcError) as info:
        CONVERTER.convert(module, spec, "fp16", feeds, tmp_path / "out" / "model.om", soc_version=SOC)
    message = str(info.value)
    assert "E19010" in message and "no parser" in message.lower() and "pre-check" in message
    assert "E10001" in message and "invalid value" in message
    assert [c["code"] for c in info.value.codes] == ["E19010", "E10001", "W11001"]
    assert info.value.log_path.is_file() and "E19010" in info.value.log_path.read_text()
    argv = argv_file.read_text()
    assert "--framework=5" in argv and f"--soc_version={SOC}" in argv and "--input_format=ND" in argv
    assert not list((tmp_path / "out").rglob("*.om"))
    info.value.log_path.unlink()


def test_translate_unknown_codes():
    [entry] = translate_atc_log("E99999: something new")
    assert entry["code"] == "E99999" and "reference" in entry["meaning"]


def test_without_cann(built, no_cann, tmp_path, monkeypatch):
    _, spec, _ = built(BERT)
    assert find_atc() is None
    reason = CONVERTER.unsupported_reason(spec, "fp16")
    assert "no CANN toolkit" in reason and "--atc-script" in reason
    assert CONVERTER.unsupported_reason(spec, "fp16", atc_script=True) is None
    assert "AMCT" in CONVERTER.unsupported_reason(spec, "int8-dynamic")
    assert CONVERTER.artifact_name(atc_script=True) == "model.atc" and CONVERTER.artifact_name() == "model.om"
    assert "no .om is produced" in CONVERTER.verify_reason(atc_script=True)
    assert "ais_bench" in CONVERTER.verify_reason() and "acl" in CONVERTER.verify_reason()
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # as on an NPU host with ais_bench
                        lambda name, *a: object() if name == "ais_bench" else real_find_spec(name, *a))
    assert CONVERTER.verify_reason() is None
    assert "uint8" in CONVERTER.verify_reason(aipp=True)  # AIPP .om inputs are images, not the float samples
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
    toolkit = tmp_path / "toolkit"
    _fake_atc(toolkit / "compiler" / "bin", "exit 0\n")
    monkeypatch.setenv("ASCEND_TOOLKIT_HOME", str(toolkit))
    assert find_atc() == str(toolkit / "compiler" / "bin" / "atc")


def test_pipeline_without_cann_says_how(no_cann, tmp_path):
    from sdk.export.api import export

    with pytest.raises(UnsupportedError, match="--atc-script"):
        export(BERT, "om", "fp16", out_dir=tmp_path, tiny=True)


def test_pipeline_atc_script_folder(no_cann, tmp_path):
    from sdk.export.api import export

    result = export(VISION, "om", "fp16", out_dir=tmp_path, tiny=True, atc_script=True, soc_version=SOC)[0]
    assert result.path.name == "model.atc" and (result.path / "atc.sh").is_file()
    assert result.passed is None and "no .om is produced" in result.parity["skipped"]


# -- int8: AMCT calibration (a stand-in amct_onnx that copies the model: it checks our flow, not AMCT) ------
FAKE_AMCT = """
import json, shutil
AMCT_SO = None  # onnxruntime.InferenceSession(path, None): default options
def create_quant_config(config_file, model_file, skip_layers, batch_num, activation_offset, config_defination):
    json.dump({"batch_num": batch_num}, open(config_file, "w"))
def quantize_model(config_file, model_file, modified_onnx_file, record_file):
    shutil.copyfile(model_file, modified_onnx_file)
    open(record_file, "w").write("")
def save_model(modified_onnx_file, record_file, save_path):
    for kind in ("deploy", "fake_quant"):
        shutil.copyfile(modified_onnx_file, save_path + "_" + kind + "_model.onnx")
"""


def _fake_amct(root: Path) -> Path:
    (root / "amct_onnx").mkdir(parents=True)
    (root / "amct_onnx" / "__init__.py").write_text(FAKE_AMCT)
    return root


def test_int8_is_static_and_needs_amct(built, no_cann):
    _, spec, _ = built(VISION)
    assert "int8-static" in CONVERTER.unsupported_reason(spec, "int8-dynamic")
    reason = CONVERTER.unsupported_reason(spec, "int8-static")
    assert "amct_onnx" in reason and "--atc-script" in reason
    assert CONVERTER.unsupported_reason(spec, "int8-static", atc_script=True) is None


def test_int8_atc_script_folder_calibrates_with_amct_before_atc(no_cann, tmp_path):
    from sdk.export.api import export

    spec = get_model(VISION, tiny=True)
    result = export(VISION, "om", "int8-static", out_dir=tmp_path, tiny=True, atc_script=True, soc_version=SOC)[0]
    folder = result.path
    script = (folder / "atc.sh").read_text()
    calibrate = script.index("python3 amct_calibrate.py model.onnx calibration.npz amct/model")
    assert calibrate < script.index("--model=amct/model_deploy_model.onnx")
    assert result.details["amct"] == {"ran": False, "calibration_samples": len(spec.calibration_inputs()),
                                      "command": "python3 amct_calibrate.py model.onnx calibration.npz amct/model"}
    with np.load(folder / "calibration.npz") as data:
        np.testing.assert_array_equal(data[f"0/{spec.input_names[0]}"], spec.calibration_inputs()[0][spec.input_names[0]])
    assert "amct_calibrate.py" in (folder / "README.md").read_text()

    env = {**os.environ, "PYTHONPATH": ""}
    run = [sys.executable, "amct_calibrate.py", "model.onnx", "calibration.npz", "amct/model"]
    missing = subprocess.run(run, cwd=folder, env=env, capture_output=True, text=True)
    assert missing.returncode == 127 and "amct_onnx is not importable" in missing.stderr
    env["PYTHONPATH"] = str(_fake_amct(tmp_path / "fake"))
    done = subprocess.run(run, cwd=folder, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (folder / "amct" / "model_deploy_model.onnx").is_file()
    config = json.loads((folder / "amct" / "amct_tmp" / "config.json").read_text())
    assert config["batch_num"] == len(spec.calibration_inputs())


def test_int8_with_amct_here_checks_its_simulation_then_runs_atc(built, tmp_path, monkeypatch):
    argv_file = tmp_path / "argv"
    _fake_atc(tmp_path / "bin", f'echo "$@" > {argv_file}\nfor a in "$@"; do case $a in --output=*) '
                                f'touch "${{a#--output=}}.om";; esac; done\nexit 0\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.syspath_prepend(str(_fake_amct(tmp_path / "fake")))
    module, spec, feeds = built(VISION)
    try:
        assert CONVERTER.unsupported_reason(spec, "int8-static") is None
        conversion = CONVERTER.convert(module, spec, "int8-static", feeds, tmp_path / "out" / "model.om",
                                       soc_version=SOC)
    finally:
        sys.modules.pop("amct_onnx", None)
    amct = conversion.details["amct"]
    assert amct["ran"] and amct["calibration_samples"] == len(feeds)
    assert amct["fake_quant_vs_fp32"]["max_abs_err"] < 1e-4  # the stand-in does not quantize
    assert "_deploy_model.onnx" in argv_file.read_text() and conversion.path.is_file()


# -- the OM runtime backend (no .om exists here: fake headers and stand-in runtimes) -------------------
def _fake_om(path: Path, payload: bytes = b"\0" * 32, length: int | None = None, name: bytes = b"fake") -> Path:
    header = bytearray(OM_HEADER_LEN)
    struct.pack_into("<III", header, 0, struct.unpack("<I", OM_MAGIC_BYTES)[0], OM_HEADER_LEN, 0x10000000)
    struct.pack_into("<I", header, 12 + 64, len(payload) if length is None else length)
    header[84:84 + len(name)] = name
    path.write_bytes(bytes(header) + payload)
    return path


def test_om_header_sniffing(tmp_path):
    fake = _fake_om(tmp_path / "weights.bin")  # not named .om: found by its header
    assert device_runtime.sniff_format(fake) == "om"
    assert read_om_header(fake)["name"] == "fake"
    with pytest.raises(device_runtime.CorruptArtifactError, match="truncated"):
        read_om_header(_fake_om(tmp_path / "short.om", payload=b"\0" * 10, length=1000))
    (tmp_path / "bad.om").write_bytes(b"PK\x03\x04" + bytes(300))
    with pytest.raises(device_runtime.CorruptArtifactError, match="magic"):
        read_om_header(tmp_path / "bad.om")
    (tmp_path / "tiny.om").write_bytes(OM_MAGIC_BYTES + struct.pack("<I", OM_HEADER_LEN))
    with pytest.raises(device_runtime.CorruptArtifactError, match="truncated"):
        read_om_header(tmp_path / "tiny.om")


def test_om_load_names_the_packages_needed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ais_bench", None)
    monkeypatch.setitem(sys.modules, "acl", None)
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("ais_bench", "acl") else real_find_spec(name, *a))
    with pytest.raises(device_runtime.BackendUnavailableError) as info:
        device_runtime.load(_fake_om(tmp_path / "model.om"))
    assert "ais_bench" in str(info.value) and "acl" in str(info.value)


class _FakeInferSession:
    """Stands in for ais_bench.infer.interface.InferSession: doubles its input. Not an NPU, not an .om."""

    def __init__(self, device_id, path):
        self.device_id, self.path = device_id, path
        arg = types.SimpleNamespace
        self._in = [arg(name="x", shape=[1, 4], datatype="dtype.float32")]
        self._out = [arg(name="y", shape=[1, 4], datatype="dtype.float32")]

    def get_inputs(self):
        return self._in

    def get_outputs(self):
        return self._out

    def infer(self, feeds, mode="static"):
        assert mode == "static"
        return [feeds[0] * 2]


def test_ais_bench_adapter_with_a_stand_in(tmp_path, monkeypatch):
    interface = types.ModuleType("ais_bench.infer.interface")
    interface.InferSession = _FakeInferSession
    package = types.ModuleType("ais_bench")
    package.__path__ = []
    monkeypatch.setitem(sys.modules, "ais_bench", package)
    monkeypatch.setitem(sys.modules, "ais_bench.infer", types.ModuleType("ais_bench.infer"))
    monkeypatch.setitem(sys.modules, "ais_bench.infer.interface", interface)
    import device_runtime.backends.ascend as ascend

    from device_runtime.registry import BACKENDS, Backend

    monkeypatch.setitem(BACKENDS, "om", [Backend("om", "ais_bench", ascend.AisBenchSession, lambda: None)])
    session = device_runtime.load(_fake_om(tmp_path / "model.om"), device_id=1)
    assert session.backend == "ais_bench" and session.info["device_id"] == 1
    assert [t.describe() for t in session.get_inputs()] == ["x: float32[1,4]"]
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x * 2)
    assert session.benchmark({"x": x}, warmup=1, runs=3).runs == 3


class _FakeAcl(types.ModuleType):
    """Stands in for pyACL with host memory: one float32[1,4] input, output = input + 1. Not an NPU."""

    def __init__(self):
        super().__init__("acl")
        mem: dict[int, bytearray] = {}
        counter = iter(range(1000, 10**6))
        self.calls: list[str] = []

        def alloc(size, *_):
            handle = next(counter)
            mem[handle] = bytearray(size)
            return handle, 0

        def memcpy(dst, dst_size, src, src_size, kind):
            mem[dst][:src_size] = mem[src][:src_size]
            return 0

        def execute(model_id, in_ds, out_ds):
            self.calls.append("execute")
            x = np.frombuffer(bytes(mem[in_ds[0]]), np.float32)
            mem[out_ds[0]][:] = (x + 1).astype(np.float32).tobytes()
            return 0

        def bytes_to_ptr(raw):
            handle = next(counter)
            mem[handle] = bytearray(raw)
            return handle

        ns = types.SimpleNamespace
        self.init = lambda: 0
        self.finalize = lambda: 0
        self.create_data_buffer = lambda buf, size: buf
        self.destroy_data_buffer = lambda buf: 0
        self.rt = ns(set_device=lambda d: 0, reset_device=lambda d: 0, create_context=lambda d: ("ctx", 0),
                     destroy_context=lambda c: 0, malloc=alloc, free=lambda h: 0, malloc_host=alloc,
                     free_host=lambda h: 0, memcpy=memcpy)
        self.util = ns(bytes_to_ptr=bytes_to_ptr, ptr_to_bytes=lambda h, size: bytes(mem[h][:size]))
        dims = ({"name": "t", "dimCount": 2, "dims": [1, 4]}, 0)
        self.mdl = ns(load_from_file=lambda p: (7, 0), unload=lambda m: 0, create_desc=lambda: "desc",
                      get_input_index_by_name=lambda d, name: (0, ACL_ERROR_NOT_FOUND),
                      destroy_desc=lambda d: 0, get_desc=lambda d, m: 0, get_num_inputs=lambda d: 1,
                      get_num_outputs=lambda d: 1, get_input_name_by_index=lambda d, i: "x",
                      get_output_name_by_index=lambda d, i: "y", get_input_dims=lambda d, i: dims,
                      get_output_dims=lambda d, i: dims, get_input_data_type=lambda d, i: 0,
                      get_output_data_type=lambda d, i: 0, get_input_size_by_index=lambda d, i: 16,
                      get_output_size_by_index=lambda d, i: 16, create_dataset=lambda: [],
                      destroy_dataset=lambda ds: 0, add_dataset_buffer=lambda ds, b: (ds.append(b), 0),
                      execute=execute)


def test_acl_adapter_with_a_stand_in(tmp_path, monkeypatch):
    fake = _FakeAcl()
    monkeypatch.setitem(sys.modules, "acl", fake)
    import device_runtime.backends.ascend as ascend
    from device_runtime.registry import BACKENDS, Backend

    monkeypatch.setitem(BACKENDS, "om", [Backend("om", "acl", ascend.AclSession, lambda: None)])
    session = device_runtime.load(_fake_om(tmp_path / "model.om"))
    assert session.backend == "acl"
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    np.testing.assert_array_equal(session.run(None, [x])[0], x + 1)
    assert fake.calls == ["execute"]
    session.close()


ACL_ERROR_NOT_FOUND = 100000  # what a stand-in returns for a name the model lacks (any non-zero code)


class _FakeAclProfiles(types.ModuleType):
    """Stands in for pyACL with a --dynamic_dims model from `export --seq-lens 8,16`, in host memory: inputs
    input_ids and attention_mask int64[1,-1] (plus ATC's profile input, last), outputs `tokens` float32[1,-1]
    (ids * mask) and `total` float32[1,1]. Buffers are sized for the largest profile, as ACL sizes them. Not an
    NPU: it checks that each run sets a compiled profile before it executes, and reads outputs at that profile."""

    GEARS = ((1, 8, 1, 8), (1, 16, 1, 16))

    def __init__(self):
        super().__init__("acl")
        mem: dict[int, bytearray] = {}
        counter = iter(range(1000, 10**6))
        self.calls: list = []
        current: dict = {}

        def alloc(size, *_):
            handle = next(counter)
            mem[handle] = bytearray(size)
            return handle, 0

        def memcpy(dst, dst_size, src, src_size, kind):
            assert src_size <= dst_size
            mem[dst][:src_size] = mem[src][:src_size]
            return 0

        def set_dims(model_id, dataset, index, dims):
            assert index == 2 and dims["dimCount"] == len(dims["dims"]) == 4
            assert tuple(dims["dims"]) in self.GEARS, dims
            current["dims"] = tuple(dims["dims"])
            self.calls.append(("set_input_dynamic_dims", dims["dims"]))
            return 0

        def execute(model_id, in_ds, out_ds):
            length = current.pop("dims")[1]  # a run without a profile set fails here
            self.calls.append(("execute", length))
            ids = np.frombuffer(bytes(mem[in_ds[0]][:8 * length]), np.int64)
            mask = np.frombuffer(bytes(mem[in_ds[1]][:8 * length]), np.int64)
            tokens = (ids * mask).astype(np.float32)
            mem[out_ds[0]][:4 * length] = tokens.tobytes()
            mem[out_ds[1]][:4] = np.float32(tokens.sum()).tobytes()
            current["out"] = length
            return 0

        def bytes_to_ptr(raw):
            handle = next(counter)
            mem[handle] = bytearray(raw)
            return handle

        names = ["input_ids", "attention_mask", "ascend_mbatch_shape_data"]
        in_dims = [[1, -1], [1, -1], [2]]
        out_names, out_dims = ["tokens", "total"], [[1, -1], [1, 1]]

        def dims_of(shape):
            return {"name": "", "dimCount": len(shape), "dims": list(shape)}, 0

        ns = types.SimpleNamespace
        self.init = lambda: 0
        self.create_data_buffer = lambda buf, size: buf
        self.destroy_data_buffer = lambda buf: 0
        self.rt = ns(set_device=lambda d: 0, reset_device=lambda d: 0, create_context=lambda d: ("ctx", 0),
                     destroy_context=lambda c: 0, malloc=alloc, free=lambda h: 0, malloc_host=alloc,
                     free_host=lambda h: 0, memcpy=memcpy)
        self.util = ns(bytes_to_ptr=bytes_to_ptr, ptr_to_bytes=lambda h, size: bytes(mem[h][:size]))
        self.mdl = ns(
            load_from_file=lambda p: (7, 0), unload=lambda m: 0, create_desc=lambda: "desc", destroy_desc=lambda d: 0,
            get_desc=lambda d, m: 0, get_num_inputs=lambda d: 3, get_num_outputs=lambda d: 2,
            get_input_index_by_name=lambda d, name: (names.index(name), 0) if name in names else (0, 1),
            get_input_name_by_index=lambda d, i: names[i], get_output_name_by_index=lambda d, i: out_names[i],
            get_input_dims=lambda d, i: dims_of(in_dims[i]), get_output_dims=lambda d, i: dims_of(out_dims[i]),
            get_input_data_type=lambda d, i: 9 if i < 2 else 3, get_output_data_type=lambda d, i: 0,
            get_input_size_by_index=lambda d, i: 8 * 16 if i < 2 else 8,
            get_output_size_by_index=lambda d, i: 4 * 16 if i == 0 else 4,
            get_input_dynamic_gear_count=lambda d, index: (len(self.GEARS), 0),
            get_input_dynamic_dims=lambda d, index, count: (
                [{"name": "", "dimCount": 4, "dims": list(g)} for g in self.GEARS[:count]], 0),
            set_input_dynamic_dims=set_dims,
            get_cur_output_dims=lambda d, i: dims_of([1, current["out"]] if i == 0 else [1, 1]),
            create_dataset=lambda: [], destroy_dataset=lambda ds: 0,
            add_dataset_buffer=lambda ds, b: (ds.append(b), 0), execute=execute)


def test_acl_routes_each_request_to_its_dynamic_dims_profile(tmp_path, monkeypatch):
    fake = _FakeAclProfiles()
    monkeypatch.setitem(sys.modules, "acl", fake)
    import device_runtime.backends.ascend as ascend
    from device_runtime import BucketedSession, SequenceTooLongError
    from device_runtime.registry import BACKENDS, Backend

    monkeypatch.setitem(BACKENDS, "om", [Backend("om", "acl", ascend.AclSession, lambda: None)])
    session = device_runtime.load(_fake_om(tmp_path / "model-seq8_16.om"))
    # the lengths come from the model's own profiles (no manifest beside it)
    assert isinstance(session, BucketedSession) and session.lengths == [8, 16]
    assert [t.name for t in session.get_inputs()] == ["input_ids", "attention_mask"]  # ATC's input is hidden
    for length, bucket in ((5, 8), (8, 8), (11, 16)):
        ids = np.arange(1, length + 1, dtype=np.int64)[None]
        fake.calls.clear()
        tokens, total = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        assert fake.calls == [("set_input_dynamic_dims", [1, bucket, 1, bucket]), ("execute", bucket)]
        np.testing.assert_array_equal(tokens, ids.astype(np.float32))  # padded positions cut off again
        assert float(total[0, 0]) == float(ids.sum())  # padding (id 0, mask 0) adds nothing
    with pytest.raises(SequenceTooLongError, match="17 tokens is longer than the largest bucket .*16"):
        ids = np.ones((1, 17), np.int64)
        session.run(None, {"input_ids": ids, "attention_mask": ids})
    inner = session._sessions[8]
    with pytest.raises(device_runtime.ShapeError, match="no compiled --dynamic_dims profile"):
        inner._execute([np.ones((1, 9), np.int64), np.ones((1, 9), np.int64)])
    session.close()


def test_ais_bench_routes_by_the_lengths_the_export_recorded(tmp_path, monkeypatch):
    from device_runtime import BucketedSession
    from device_runtime.manifest import ArtifactEntry, record_artifact

    class DynamicInferSession(_FakeInferSession):
        def __init__(self, device_id, path):
            super().__init__(device_id, path)
            arg = types.SimpleNamespace
            self._in = [arg(name="input_ids", shape=[1, -1], datatype="dtype.int64")]
            self._out = [arg(name="logits", shape=[1, 2], datatype="dtype.float32")]
            self.shapes = []

        def infer(self, feeds, mode="static"):
            assert mode == "dymdims"
            self.shapes.append(feeds[0].shape)
            return [np.full((1, 2), feeds[0].sum(), np.float32)]

    interface = types.ModuleType("ais_bench.infer.interface")
    interface.InferSession = DynamicInferSession
    package = types.ModuleType("ais_bench")
    package.__path__ = []
    monkeypatch.setitem(sys.modules, "ais_bench", package)
    monkeypatch.setitem(sys.modules, "ais_bench.infer", types.ModuleType("ais_bench.infer"))
    monkeypatch.setitem(sys.modules, "ais_bench.infer.interface", interface)
    import device_runtime.backends.ascend as ascend
    from device_runtime.registry import BACKENDS, Backend

    monkeypatch.setitem(BACKENDS, "om", [Backend("om", "ais_bench", ascend.AisBenchSession, lambda: None)])
    om = _fake_om(tmp_path / "model-seq8_16.om")
    record_artifact(tmp_path, {"name": "stand-in"}, ArtifactEntry(
        file=om.name, format="om", precision="fp16", requested_precision="fp16", sha256="", size_bytes=0,
        details={"buckets": {"lengths": [8, 16], "entry_points": "ATC --dynamic_dims profiles of one .om"}}))
    session = device_runtime.load(om)
    assert isinstance(session, BucketedSession) and session.lengths == [8, 16]
    logits, = session.run(None, {"input_ids": np.ones((1, 11), np.int64)})
    assert session._sessions[16]._session.shapes == [(1, 16)] and float(logits[0, 0]) == 11.0
