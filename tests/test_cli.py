"""The `pocketformer` command line, end to end on tiny models, and its exit codes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sdk.cli.app import EXIT_BAD_INPUT, EXIT_OK, EXIT_UNSUPPORTED, main
from models_zoo.data import photo_paths


def test_zoo_list_shows_every_model_and_its_inputs(capsys):
    assert main(["zoo", "list"]) == EXIT_OK
    out = capsys.readouterr().out
    for name in ("mobilevit_xxs", "efficientformer_l7", "tinybert_4l_312d", "q8bert"):
        assert name in out
    assert "pixel_values float32[1, 3, 256, 256]" in out and "token_type_ids int64[1, 128]" in out


def test_help_explains_every_option():
    out = subprocess.run([sys.executable, "-m", "sdk.cli", "export", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--to", "--precision", "--out", "--weights", "--tiny", "--seq-len"):
        assert flag in out.stdout
    assert "int8-dynamic" in out.stdout


def test_export_run_and_bench_a_vision_model(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", "mobilevit_xxs", "--tiny", "--to", "pte", "--out", str(out), "--quiet"]) == EXIT_OK
    artifact = out / "mobilevit_xxs-tiny" / "fp32" / "model.pte"
    assert artifact.exists() and "max abs err" in capsys.readouterr().out

    assert main(["run", str(artifact), "--image", str(photo_paths()[0]), "--top", "3"]) == EXIT_OK
    printed = capsys.readouterr().out
    assert "logits: float32[1, 1000]" in printed and "1. " in printed and "3. " in printed
    assert "random weights" in printed

    bench_json = tmp_path / "bench.json"
    assert main(["bench", str(artifact), "--runs", "5", "--warmup", "1", "--json", str(bench_json), "--quiet"]) == EXIT_OK
    result = json.loads(bench_json.read_text())
    assert result["runs"] == 5 and result["latency"]["unit"] == "ms" and result["latency"]["p50"] > 0


def test_run_a_bert_model_on_text(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", "tinybert_4l_312d-tiny", "--to", "pte", "--precision", "int8", "--out", str(out),
                 "--quiet"]) == EXIT_OK
    artifact = out / "tinybert_4l_312d-tiny" / "int8" / "model.pte"
    assert main(["run", str(artifact), "--text", "What a wonderful little film."]) == EXIT_OK
    printed = capsys.readouterr().out
    assert "positive" in printed and "negative" in printed
    assert main(["run", str(artifact), "--image", str(photo_paths()[0])]) == EXIT_BAD_INPUT
    assert "not an image" in capsys.readouterr().err


@pytest.mark.parametrize("argv, code, message", [
    (["export", "mobilevit_xxxl", "--to", "pte"], EXIT_BAD_INPUT, "known models: deit_base_distilled_patch16_224"),
    (["export", "mobilevit_xxs", "--to", "docx"], EXIT_BAD_INPUT, "unknown format 'docx'"),
    (["export", "mobilevit_xxs", "--tiny", "--to", "pte", "--weights", "/nonexistent/w.safetensors"],
     EXIT_BAD_INPUT, "weights file not found"),
    (["export", "mobilevit_xxs", "--to", "coreml", "--precision", "int8-dynamic"], EXIT_UNSUPPORTED,
     "Core ML has no dynamic activation quantization"),
    (["run", "/nonexistent/model.pte", "--text", "hi"], EXIT_BAD_INPUT, "no such artifact"),
])
def test_errors_are_one_line_with_a_trustworthy_exit_code(argv, code, message, capsys, tmp_path):
    assert main(argv + (["--out", str(tmp_path)] if argv[0] == "export" else [])) == code
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("pocketformer: error:") and message in errors[0]


def test_corrupt_artifact_exit_code(tmp_path, capsys):
    bad = tmp_path / "model.pte"
    bad.write_bytes(b"\x00" * 4 + b"ET12" + b"\x00" * 100)
    assert main(["bench", str(bad), "--runs", "1"]) == EXIT_BAD_INPUT
    assert "not a loadable ExecuTorch program" in capsys.readouterr().err


@pytest.mark.parametrize("argv, given", [
    (["--seq-lens", "16,32"], {"seq_lens": "16,32"}),
    (["--pack", "64x6"], {"pack": "64x6"}),
    (["--seq-lens", "16,32", "--dynamic-shapes"], {"seq_lens": "16,32", "dynamic_shapes": True}),
])
def test_export_serving_flags_reach_the_pipeline_once(argv, given, monkeypatch, tmp_path):
    """The serving flags get to `sdk.export.api.export` by name, whatever format options come with them (the
    shared `seq_lens` dest once reached it twice: a TypeError for every `--seq-lens` export)."""
    from sdk.export import api as export_api

    seen = {}

    class Result:
        report_path = tmp_path / "report.json"

        def summary(self):
            return "exported"

    def fake_export(model, formats, precision, **kwargs):
        seen.update(kwargs, model=model, formats=formats)
        return [Result()]

    monkeypatch.setattr(export_api, "export", fake_export)
    assert main(["export", "tinybert_4l_312d", "--tiny", "--to", "pte,tflite", "--out", str(tmp_path), "--quiet"]
                + argv) == EXIT_OK
    assert seen["formats"] == ["pte", "tflite"]
    for key, value in given.items():
        assert seen[key] == value
