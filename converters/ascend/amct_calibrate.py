"""Ascend int8: AMCT (amct_onnx, from Huawei's CANN toolkit) post-training calibration of an ATC-ready ONNX.

Self-contained on purpose (numpy, onnxruntime and amct_onnx only): Pocketformer imports it where AMCT is
installed, and copies it verbatim into an `--atc-script` folder, where `atc.sh` runs it on the CANN host.
The steps are AMCT's own (its ONNX samples): `create_quant_config` -> `quantize_model` (inserts the
calibration ops) -> run the modified model on ONNX Runtime with AMCT's custom-op library (`amct.AMCT_SO`) over
the calibration feeds -> `save_model`, which writes `<prefix>_deploy_model.onnx` (for ATC) and
`<prefix>_fake_quant_model.onnx` (int8 simulated on ONNX Runtime, to check accuracy before ATC).

    python amct_calibrate.py model.onnx calibration.npz amct/model   # what atc.sh runs
"""
from __future__ import annotations

import sys
from pathlib import Path


def load_feeds(npz_path) -> list[dict]:
    """Feeds saved as `np.savez(path, **{f"{i}/{name}": array})`, in sample order."""
    import numpy as np

    with np.load(npz_path) as data:
        samples: dict[int, dict] = {}
        for key in data.files:
            index, name = key.split("/", 1)
            samples.setdefault(int(index), {})[name] = data[key]
    return [samples[i] for i in sorted(samples)]


def calibrate(amct, onnx_path, feeds: list[dict], prefix) -> dict[str, str]:
    """AMCT int8 calibration of `onnx_path` on `feeds`; returns the paths of the deploy and fake-quant models."""
    import onnxruntime as ort

    prefix = Path(prefix)
    work = prefix.parent / "amct_tmp"
    work.mkdir(parents=True, exist_ok=True)
    config, record, modified = work / "config.json", work / "record.txt", work / "modified_model.onnx"
    # batch_num: AMCT reads activation ranges over this many forward passes, one per calibration feed.
    amct.create_quant_config(config_file=str(config), model_file=str(onnx_path), skip_layers=[],
                             batch_num=len(feeds), activation_offset=True, config_defination=None)
    amct.quantize_model(config_file=str(config), model_file=str(onnx_path), modified_onnx_file=str(modified),
                        record_file=str(record))
    session = ort.InferenceSession(str(modified), amct.AMCT_SO)
    names = [i.name for i in session.get_inputs()]
    for feed in feeds:
        session.run(None, {n: feed[n] for n in names})
    amct.save_model(str(modified), str(record), str(prefix))
    paths = {"deploy": f"{prefix}_deploy_model.onnx", "fake_quant": f"{prefix}_fake_quant_model.onnx"}
    missing = [p for p in paths.values() if not Path(p).is_file()]
    if missing:
        raise RuntimeError(f"AMCT did not write {missing}; see its log above")
    return paths


def fake_quant_outputs(amct, fake_quant_path, feeds: list[dict]) -> list[list]:
    """The int8-simulated model's outputs on ONNX Runtime (with AMCT's custom ops), per feed."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(fake_quant_path), amct.AMCT_SO)
    names = [i.name for i in session.get_inputs()]
    return [session.run(None, {n: feed[n] for n in names}) for feed in feeds]


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    try:
        import amct_onnx as amct
    except ImportError:
        print("amct_onnx is not importable: install AMCT from the CANN toolkit "
              "(pip install <ascend-toolkit>/tools/amct/amct_onnx/amct_onnx-*.whl) and source set_env.sh",
              file=sys.stderr)
        return 127
    paths = calibrate(amct, argv[0], load_feeds(argv[1]), argv[2])
    print(f"deploy model: {paths['deploy']}\nfake-quant model: {paths['fake_quant']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
