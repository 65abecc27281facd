"""Verification bundles (format pocketformer.bundle v1) and `pocketformer verify --device local`.

One tiny real export (mobilevit_xxs-tiny, .tflite fp32), bundled with the zoo's real sample photos. The bundle
is read back whole; any changed, missing or unlisted file, and a newer schema, is refused naming it; verify
passes on the real inputs and fails (exit 1) when the bundle's expected outputs are not the artifact's.
"""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from device_runtime.bundle import BundleError, open_bundle
from sdk.device.bundles import write_bundle, write_sums
from sdk.cli.app import EXIT_OK, main
from sdk.device.verify import verify_on_device

EXIT_PARITY = 1


@pytest.fixture(scope="module")
def export(export_tiny):
    return export_tiny("mobilevit_xxs", "tflite", "fp32")


@pytest.fixture(scope="module")
def bundle(export, tmp_path_factory):
    return write_bundle([export.path.parent], tmp_path_factory.mktemp("bundle") / "b")


def test_bundle_round_trip(export, bundle, tmp_path):
    from models_zoo import get_model

    spec = get_model("mobilevit_xxs", tiny=True)
    with open_bundle(bundle) as b:
        meta = b.meta
        assert meta["schema"] == "pocketformer.bundle" and meta["schema_version"] == 1
        assert "labels" not in meta["model"] and meta["model"]["name"] == "mobilevit_xxs-tiny"
        (artifact,) = b.artifacts
        assert artifact["file"] == "artifacts/model.tflite" and artifact["expected"] == "expected/model.tflite"
        assert artifact["entry"]["sha256"] == export.entry.sha256 and artifact["tolerance"]["atol"] > 0
        feeds = spec.sample_inputs()
        assert len(b.samples) == len(feeds) >= 4
        for sample, feed in zip(b.samples, feeds):  # the exact tensors the export verified on
            np.testing.assert_array_equal(b.inputs(sample)["pixel_values"], feed["pixel_values"])
            assert (bundle / f"raw/{Path(sample['source']).stem}.png").is_file()
        # The host's outputs are the artifact's own, and close to (not equal to) PyTorch's.
        import device_runtime

        session = device_runtime.load(export.path)
        first = b.samples[0]
        (got,) = session.run(None, b.inputs(first))
        np.testing.assert_array_equal(b.expected(artifact, first["id"])[0], got)
        ref = b.reference(first["id"])[0]
        assert 0 < np.abs(ref - got).max() < 1e-4 and ref.std() > 1e-3
    labels = (bundle / "labels.txt").read_text().splitlines()
    assert len(labels) == len(json.loads(export.report_path.read_text())["model"]["labels"]) > 1
    assert meta["raw"]["images"] and all((bundle / p).is_file() for p in meta["raw"]["images"])
    assert (bundle / "report.json").is_file() and "model.tflite" in json.loads((bundle / "report.json").read_text())["artifacts"]
    # Every other file is listed; .npy files carry numpy's version 1.0 header, little-endian.
    listed = {line.split("  ", 1)[1] for line in (bundle / "SHA256SUMS").read_text().splitlines()}
    assert listed == {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {"SHA256SUMS"}
    npy = bundle / first["inputs"]["pixel_values"]
    assert npy.read_bytes()[:8] == b"\x93NUMPY\x01\x00" and b"'<f4'" in npy.read_bytes()[:128]
    # The zip form holds the same tree at its root and opens the same way.
    packed = write_bundle([export.path], tmp_path / "b.zip", zip_=True)
    with zipfile.ZipFile(packed) as zf:
        assert sorted(zf.namelist()) == sorted(listed | {"SHA256SUMS"})
    with open_bundle(packed) as z:
        assert len(z.samples) == len(feeds)
        extracted = z.root
    assert not extracted.exists()  # the temporary extraction is removed on close


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(bundle, dest)
    return dest


def test_tampered_bundles_are_refused(bundle, tmp_path):
    changed = _copy(bundle, tmp_path / "1")
    target = changed / "inputs/000/pixel_values.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="inputs/000/pixel_values.npy does not match its checksum"):
        open_bundle(changed)
    missing = _copy(bundle, tmp_path / "2")
    (missing / "artifacts/model.tflite").unlink()
    with pytest.raises(BundleError, match="artifacts/model.tflite is listed in SHA256SUMS but missing"):
        open_bundle(missing)
    extra = _copy(bundle, tmp_path / "3")
    (extra / "artifacts/other.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3")
    with pytest.raises(BundleError, match="artifacts/other.tflite is not listed"):
        open_bundle(extra)
    # A changed byte inside a zip is caught the same way.
    packed = tmp_path / "b.zip"
    with zipfile.ZipFile(packed, "w") as zf:
        for p in sorted(q for q in bundle.rglob("*") if q.is_file()):
            payload = p.read_bytes()
            if p.name == "model.tflite":
                payload = payload[:-1] + bytes([payload[-1] ^ 1])
            zf.writestr(p.relative_to(bundle).as_posix(), payload)
    with pytest.raises(BundleError, match="artifacts/model.tflite does not match"):
        open_bundle(packed)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(BundleError, match="outside the bundle"):
        open_bundle(evil)
    assert not (tmp_path / "outside.txt").exists()


def test_newer_schema_is_refused(bundle, tmp_path):
    newer = _copy(bundle, tmp_path)
    meta = json.loads((newer / "bundle.json").read_text())
    meta["schema_version"] = 2
    (newer / "bundle.json").write_text(json.dumps(meta))
    write_sums(newer)  # consistent checksums: the version alone is refused
    with pytest.raises(BundleError, match="version 2 bundle; this Pocketformer reads version 1"):
        open_bundle(newer)


def test_bundle_refuses_bad_input_without_writing(tmp_path):
    from device_runtime.errors import UsageError

    with pytest.raises(UsageError, match="no such export folder or artifact"):
        write_bundle([tmp_path / "nope"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_verify_local_passes_and_fails_on_wrong_expected_outputs(bundle, tmp_path, capsys):
    report = tmp_path / "report"
    assert main(["verify", str(bundle), "--device", "local", "--report-dir", str(report), "--quiet"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "PASS" in out
    (written,) = report.glob("device_verify-*.json")
    doc = json.loads(written.read_text())
    result = doc["artifacts"][0]
    assert doc["passed"] and doc["device"] == "local" and doc["emulated"] is None
    assert result["vs_host"]["max_abs_err"] == 0.0 and result["vs_host"]["top1_agreement"] == 1.0
    assert 0 < result["vs_reference"]["max_abs_err"] < 1e-4 and result["latency"]["kind"] == "device"
    # The report shows it beside the device latency; an emulated board's bench timings are relabelled.
    from sdk.report import numerics as report_numerics

    header, rows = report_numerics.rows(report, [{"device": "local", "model": "mobilevit_xxs-tiny", "format": "tflite",
                                                  "precision": "fp32", "latency": {"p50": 1.25}}])
    (row,) = rows
    assert row[header.index("verdict")] == "pass" and row[header.index("bench p50 ms")] == "1.250"
    assert row[header.index("max abs vs host")] == "0"
    board = {"device": "ssh://b:22", "host": {"cpu": "Cortex-A72 (emulated: qemu-aarch64-static)"}}
    assert report_numerics.label_emulation(board)["device"] == "ssh://b:22 (emulation)"
    assert report_numerics.label_emulation({"device": "ssh://pi:22", "host": {"cpu": "Cortex-A72"}})["device"] == "ssh://pi:22"
    # Expected outputs that are not the artifact's (consistently checksummed): the tolerance decides, exit 1.
    wrong = _copy(bundle, tmp_path)
    for path in (wrong / "expected/model.tflite").rglob("*.npy"):
        arr = np.load(path)
        np.save(path, arr + np.float32(0.05) * np.abs(arr).max())
    write_sums(wrong)
    assert main(["verify", str(wrong), "--device", "local", "--quiet"]) == EXIT_PARITY
    out = capsys.readouterr().out
    assert "FAIL: max abs error vs the host's outputs" in out
    doc = verify_on_device(wrong)
    assert not doc["passed"] and doc["artifacts"][0]["vs_host"]["max_abs_err"] > doc["artifacts"][0]["tolerance"]["atol"]


def test_bench_verify_in_the_same_trip(export, tmp_path, capsys):
    out = tmp_path / "run" / "bench.json"
    assert main(["bench", str(export.path), "--runs", "2", "--warmup", "0", "--quiet", "--json", str(out),
                 "--verify"]) == EXIT_OK
    printed = capsys.readouterr().out
    assert "p50 ms" in printed and "PASS" in printed
    (doc,) = [json.loads(p.read_text()) for p in out.parent.glob("device_verify-*.json")]
    assert doc["artifacts"][0]["vs_host"]["cosine"] == pytest.approx(1.0)


def test_export_with_bundle_writes_a_bundle_that_verifies(tmp_path, capsys):
    """`export --bundle B.zip`: the bundle of what was just exported, zipped, checked on load, and verified."""
    target = tmp_path / "b.zip"
    assert main(["export", "mobilevit_xxs", "--tiny", "--to", "onnx", "--out", str(tmp_path / "out"),
                 "--bundle", str(target), "--quiet"]) == EXIT_OK
    assert f"bundle: {target}" in capsys.readouterr().out and zipfile.is_zipfile(target)
    with open_bundle(target) as b:
        assert [a["file"] for a in b.artifacts] == ["artifacts/model.onnx"]
    assert main(["verify", str(target), "--device", "local"]) == EXIT_OK
