"""The Android app's plain-Java core (android_demo/core) against the SDK, on the JVM, plus the adb app flow.

The Java sources are compiled with `javac` into android_demo/core/build/ (git-ignored), again only when a source
changes, and their JUnit 4 tests run with `org.junit.runner.JUnitCore`. The fixtures are written here, by the
SDK's own code, during the test:

- token ids of real sentences (and accents, punctuation, unknown words, CJK, control characters, truncation,
  pairs) from `models_zoo.data.tokenize` with the real bert-base-uncased vocabulary;
- input tensors of the real sample photos from `models_zoo.data.preprocess_image`, for every image
  preprocessing the zoo declares, plus bilinear, upscaling and non-square cases;
- latency statistics from `LatencyStats.from_seconds`; the key set of a real `benchmark_artifacts` document;
- bundles in BUNDLE FORMAT v1 (checked by `device_runtime.bundle.open_bundle` too), intact and tampered;
- self-check verdicts from `converters.parity.compare` and `judge` on outputs of a real computation in fp32,
  fp16 and int8;
- sequence buckets: real sentences tokenised unpadded, with the bucket, entry point and padded arrays that
  `device_runtime.BucketedSession` chose for them (or its refusal), and a bundle of a bucketed artifact.

The Java tests assert, and also write what they computed, which is checked here as well. The app flow
(`pocketformer bench BUNDLE --device adb:SERIAL --app`) runs against test_remote's stand-in adb, extended with
the app's `pm` and `am start`: the start runs the Java core's launch code on the JVM (no phone is attached here).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "android_demo" / "core"
BUILD = CORE / "build"
JUNIT = Path("/usr/share/java/junit4.jar")
HAMCREST = next((p for p in (Path("/usr/share/java/hamcrest-core.jar"), Path("/usr/share/java/hamcrest.jar"))
                 if p.exists()), None)
JAVA_TESTS = ("CoreUnitTest", "TokenizerParityTest", "ImageParityTest", "LatencyParityTest", "BundleParityTest",
              "SelfCheckParityTest", "BucketsTest")


# -- compiling the core, once per source change ---------------------------------------------------------
def _sources() -> list[Path]:
    return sorted((CORE / "src").rglob("*.java"))


def compiled_core() -> str:
    """The classpath of the compiled core and its tests (main, test, JUnit, Hamcrest)."""
    if shutil.which("javac") is None or shutil.which("java") is None:
        pytest.skip("no JDK here (javac/java): apt-get install openjdk-17-jdk-headless (.ci/run installs it)")
    if not JUNIT.exists() or HAMCREST is None:
        pytest.skip(f"no JUnit 4 at {JUNIT} (or Hamcrest): apt-get install junit4 (.ci/run installs it)")
    digest = hashlib.sha256()
    for src in _sources():
        digest.update(src.relative_to(CORE).as_posix().encode() + b"\0" + src.read_bytes())
    key = digest.hexdigest()[:16]
    classes = BUILD / f"classes-{key}"
    BUILD.mkdir(parents=True, exist_ok=True)
    with open(BUILD / ".lock", "w") as lock:  # xdist workers compile once between them
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (classes / "ok").exists():
            for old in BUILD.glob("classes-*"):
                shutil.rmtree(old, ignore_errors=True)
            tmp = BUILD / f"tmp-{key}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            main_src = [str(p) for p in _sources() if "/src/main/" in p.as_posix()]
            test_src = [str(p) for p in _sources() if "/src/test/" in p.as_posix()]
            start = time.perf_counter()
            for out, srcs, cp in ((tmp / "main", main_src, ""), (tmp / "test", test_src, f"{tmp / 'main'}:{JUNIT}")):
                result = subprocess.run(["javac", "-encoding", "UTF-8", "-Xlint:all", "-Werror", "--release", "11",
                                         "-d", str(out), *(["-cp", cp] if cp else []), *srcs],
                                        capture_output=True, text=True)
                assert result.returncode == 0, f"javac failed:\n{result.stdout}{result.stderr}"
            (tmp / "ok").write_text(f"compiled in {time.perf_counter() - start:.1f} s\n")
            tmp.rename(classes)
    return f"{classes / 'main'}:{classes / 'test'}:{JUNIT}:{HAMCREST}"


def run_junit(classpath: str, fixtures: Path, out: Path, classes=JAVA_TESTS) -> subprocess.CompletedProcess:
    return subprocess.run(["java", "-Djava.awt.headless=true", f"-Dpocketformer.fixtures={fixtures}",
                           f"-Dpocketformer.out={out}", "-cp", classpath, "org.junit.runner.JUnitCore",
                           *[f"dev.pocketformer.core.{c}" for c in classes]],
                          capture_output=True, text=True, timeout=600)


# -- fixtures written by the SDK ----------------------------------------------------------------------------
EXTRA_SENTENCES = (
    "Café déjà vu: a naïve, coöperative Ångström façade, señor — piñata!",
    "Wait... what?! (No way) -- it's $5.99 @ 10:30, #1 [sic] {ok} ~fin~ «quoted» “smart” ‘quotes’ 50% off.",
    "Zxqvbnm flurbogated the 🙂 emoji, ᚠᛇᚻ runes and Quetzalcoatlus-sized-hyperbole.",
    "我喜欢这部电影 and 日本語のテキスト, mixed with English.",
    "Tabs\there, a NUL\x00char, zero\u200bwidth, soft\u00adhyphen and\r\nnew lines.",
    "İstanbul, ΣΟΦΙΑ and ΣΑΣ, Straße, ǅemal, ﬁne ligatures, Ⅻ and ½.",
    "a" * 120 + " is a word over a hundred characters long",
    " ".join(["This review goes on and on about the film's pacing, its score and its cast."] * 6),
    "",
    "UPPER lower MiXeD 123 4.56 7,890",
)


def write_tokenizer_fixtures(folder: Path) -> int:
    from models_zoo import data

    vocab = data.bert_vocab_path()
    folder.mkdir(parents=True)
    shutil.copy(vocab, folder / "vocab.txt")
    cases = []
    for seq_len, lowercase in ((128, True), (32, True), (9, True), (32, False)):
        prep = {"kind": "text", "seq_len": seq_len, "lowercase": lowercase, "vocab": str(vocab),
                "input_names": ["input_ids", "attention_mask", "token_type_ids"]}
        singles = [(s, None) for s in data.SAMPLE_SENTENCES + data.CALIBRATION_SENTENCES + EXTRA_SENTENCES]
        pairs = list(data.SAMPLE_SENTENCE_PAIRS) + [(EXTRA_SENTENCES[7], EXTRA_SENTENCES[1]),
                                                    (EXTRA_SENTENCES[0], EXTRA_SENTENCES[7])]
        for text, pair in singles + pairs:
            feed = data.tokenize(text, prep, pair=pair)
            cases.append({"text": text, "pair": pair, "prep": {**prep, "vocab": None},
                          "expected": {k: v[0].tolist() for k, v in feed.items()}})
    (folder / "cases.json").write_text(json.dumps({"cases": cases}, ensure_ascii=False), encoding="utf-8")
    return len(cases)


# The distinct image preprocessings the zoo declares (ModelSpec.preprocessing(), Dec 2026: DeiT 0.875/0.9,
# TinyViT 0.95, EfficientFormer bilinear, MobileViT 256 without normalisation). Listed, not collected: building
# every spec imports timm and transformers (9 s here), and the Java side is generic in these values.
ZOO_IMAGE_PREPS = [
    {"kind": "image", "size": [224, 224], "crop_pct": crop, "interpolation": interpolation,
     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    for crop, interpolation in ((0.9, "bicubic"), (0.875, "bicubic"), (0.95, "bicubic"), (0.875, "bilinear"))
] + [{"kind": "image", "size": [256, 256], "crop_pct": 0.9, "interpolation": "bicubic", "mean": [0.0, 0.0, 0.0],
      "std": [1.0, 1.0, 1.0]}]


def write_image_fixtures(folder: Path) -> list[dict]:
    from PIL import Image

    from models_zoo import data

    folder.mkdir(parents=True)
    photos = data.photo_paths() + data.photo_paths(("camera.png", "coins.png", "ihc.png"))
    pngs = []
    for src in photos:  # as sdk.device.bundles writes raw photos: PIL's decoding, saved losslessly as PNG
        dest = folder / f"{src.stem}.png"
        Image.open(src).save(dest, format="PNG")
        pngs.append(dest)
    small = folder / "chelsea_small.png"  # upscaling: a 61x47 photo to 224
    Image.open(pngs[0]).convert("RGB").resize((61, 47), Image.BICUBIC).save(small)
    preps = list(ZOO_IMAGE_PREPS)
    base = preps[0]
    preps += [{**base, "interpolation": "bilinear"}, {**base, "crop_pct": 1.0, "size": [160, 192]},
              {**base, "size": [97, 97], "crop_pct": 0.875}]
    cases = []
    for p, prep in enumerate(preps):
        for photo in pngs + [small]:
            if p > 0 and photo.name not in ("chelsea.png", "camera.png") + (("chelsea_small.png",) if p == 1 else ()):
                continue  # every photo for the first preprocessing, a colour and a grey one for the others
            rel = f"expected/{p}_{photo.stem}.npy"
            (folder / rel).parent.mkdir(exist_ok=True)
            np.save(folder / rel, data.preprocess_image(photo, prep))
            cases.append({"photo": photo.name, "prep": prep, "expected": rel})
    (folder / "cases.json").write_text(json.dumps({"cases": cases}))
    return cases


def write_latency_fixtures(folder: Path) -> list[dict]:
    from dataclasses import asdict

    from device_runtime.session import LatencyStats

    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    cases = []
    for n in (50, 7, 1, 129, 300, 1000):
        seconds = (rng.lognormal(np.log(0.004), 0.3, n) + rng.exponential(0.0005, n)).tolist()
        cases.append({"seconds": seconds, "expected": asdict(LatencyStats.from_seconds(seconds))})
    (folder / "cases.json").write_text(json.dumps({"cases": cases}))
    return cases


# A real computation whose outputs the self-check judges: a linear classifier on average-pooled real photos
# (8x8 cells), computed in fp32, in fp16 and with int8 weights, as a runtime would.
def _pooled(tensor: np.ndarray) -> np.ndarray:
    c, h, w = tensor.shape[1:]
    cells = tensor[0, :, : h // 8 * 8, : w // 8 * 8].reshape(c, 8, h // 8, 8, w // 8).mean(axis=(2, 4))
    return cells.reshape(1, -1).astype(np.float32)


def _classifier_outputs(feats, weights, how: str) -> list[list[np.ndarray]]:
    outs = []
    for f in feats:
        if how == "fp32":
            logits = f @ weights
        elif how == "fp32-other-order":  # another summation order: what another CPU's kernel does
            logits = np.einsum("bi,ij->bj", f[:, ::-1], weights[::-1]).astype(np.float32)
        elif how == "fp16":
            logits = (f.astype(np.float16) @ weights.astype(np.float16)).astype(np.float32)
        elif how == "int8":
            scale = np.abs(weights).max(axis=0) / 127
            q = np.round(weights / scale).astype(np.int8)
            logits = (f @ q.astype(np.float32)) * scale
        elif how == "int8-device":  # the same int8 model, accumulated in another order
            scale = np.abs(weights).max(axis=0) / 127
            q = np.round(weights / scale).astype(np.int8)
            logits = np.einsum("bi,ij->bj", f[:, ::-1], q[::-1].astype(np.float32)) * scale
        elif how == "broken":  # an int8 model whose scales went wrong on the device
            scale = np.abs(weights).max(axis=0) / 127
            q = np.round(weights / scale).astype(np.int8)
            logits = (f @ q.astype(np.float32)) * scale[::-1] * 3
        elif how == "nan":
            logits = f @ weights
            logits[0, 1] = np.nan
        else:
            raise ValueError(how)
        embedding = np.tanh(logits[:, :6] * 0.3).astype(np.float32)
        outs.append([np.asarray(logits, np.float32), embedding])
    return outs


def write_selfcheck_fixtures(folder: Path, image_dir: Path, image_cases: list[dict]) -> list[dict]:
    from converters.parity import compare, judge
    from models_zoo import get_model
    from models_zoo.bert import BERT_TOLERANCES

    folder.mkdir(parents=True)
    tensors = [np.load(image_dir / c["expected"]) for c in image_cases if c["prep"] == image_cases[0]["prep"]]
    feats = [_pooled(t) for t in tensors]
    weights = np.random.default_rng(3).normal(0, 0.1, (feats[0].shape[1], 10)).astype(np.float32)
    vision = get_model("deit_tiny_distilled_patch16_224")
    names = ["logits", "embedding"]

    def save(outputs, tag):
        files = []
        for s, sample in enumerate(outputs):
            row = []
            for i, array in enumerate(sample):
                rel = f"{tag}/{s}_{i}.npy"
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                np.save(folder / rel, array)
                row.append(rel)
            files.append(row)
        return files

    fp32 = _classifier_outputs(feats, weights, "fp32")
    int8 = _classifier_outputs(feats, weights, "int8")
    embed_tol = {"atol": 1e-4, "rtol": 1e-3, "min_sqnr_db": None, "min_cosine": 0.999, "min_top1": None}
    plans = [  # name, host's outputs of the artifact, fp32 reference (quantized only), device outputs, tolerance
        ("fp32-same-kernels", fp32, None, fp32, vars(vision.tolerance("fp32"))),
        ("fp32-other-order", fp32, None, _classifier_outputs(feats, weights, "fp32-other-order"),
         vars(vision.tolerance("fp32"))),
        ("fp16-vs-fp32-host", fp32, None, _classifier_outputs(feats, weights, "fp16"), vars(vision.tolerance("fp32"))),
        ("fp16", _classifier_outputs(feats, weights, "fp16"), fp32, _classifier_outputs(feats, weights, "fp16"),
         vars(vision.tolerance("fp16"))),
        ("int8-device", int8, fp32, _classifier_outputs(feats, weights, "int8-device"), vars(vision.tolerance("int8"))),
        ("int8-bert-tolerance", int8, fp32, _classifier_outputs(feats, weights, "int8-device"),
         vars(BERT_TOLERANCES["int8"])),
        ("int8-broken", int8, fp32, _classifier_outputs(feats, weights, "broken"), vars(vision.tolerance("int8"))),
        ("nan", fp32, None, _classifier_outputs(feats, weights, "nan"), vars(vision.tolerance("fp32"))),
        ("cosine-bound", fp32, None, _classifier_outputs(feats, weights, "fp16"), embed_tol),
    ]
    from models_zoo.spec import Tolerance

    cases = []
    for name, expected, reference, actual, tol in plans:
        lowering = compare(expected, actual, True, names)
        quantization = compare(reference, actual, True, names) if reference is not None else None
        # worded as sdk/device/verify.py words a device's verdict: its reference is the host's run
        failures = [f.replace("vs its PyTorch reference", "vs the host's outputs")
                    for f in judge(lowering, quantization, Tolerance(**tol))]
        cases.append({"name": name, "classifier": True, "output_names": names, "tolerance": tol,
                      "expected": save(expected, f"{name}/expected"), "actual": save(actual, f"{name}/actual"),
                      "fp32": save(reference, f"{name}/fp32") if reference is not None else None,
                      "python": {"passed": not failures, "failures": failures, "lowering": lowering,
                                 "quantization": quantization}})
    (folder / "cases.json").write_text(json.dumps({"cases": cases}))
    return cases


def _entry(artifact: Path, precision: str) -> dict:
    from device_runtime.manifest import ArtifactEntry, sha256_of

    return ArtifactEntry(file=artifact.name, format="tflite", precision=precision, requested_precision=precision,
                         sha256=sha256_of(artifact), size_bytes=artifact.stat().st_size,
                         parity={"passed": True}).to_dict()


# What the .pte converter records for `export --seq-lens 8,16,32` (converters/executorch.py, details.buckets).
BUCKET_LENGTHS = [8, 16, 32]
BUCKET_DETAILS = {"lengths": BUCKET_LENGTHS, "entry_points": {str(n): f"seq{n}" for n in BUCKET_LENGTHS}}


class _EntryPoint:
    """A stand-in for one entry point (`seq{N}`) of a bucketed artifact, for BucketedSession's routing: the
    BERT inputs at that length; running it is never needed (only `route` and `padded` are)."""

    def __new__(cls, length: int):
        from device_runtime.session import Session, TensorInfo

        class StandIn(Session):
            entry_point_option = "method"

            def _execute(self, arrays):
                raise AssertionError("routing only")

        session = StandIn("model.pte")
        session.entry_point, session.buckets = f"seq{length}", dict(BUCKET_DETAILS["entry_points"])
        session.buckets = {int(k): v for k, v in session.buckets.items()}
        session._inputs = [TensorInfo(n, (1, length), np.dtype(np.int64), dynamic_axes={1: "sequence"})
                           for n in ("input_ids", "attention_mask", "token_type_ids")]
        session._outputs = [TensorInfo("logits", (1, 2), np.dtype(np.float32))]
        return session


def write_bucket_fixtures(folder: Path) -> list[dict]:
    """Real sentences and pairs tokenised unpadded (truncated at 32 or at 64, so some are longer than the largest
    bucket), with what device_runtime's BucketedSession made of each: its bucket, entry point and padded arrays,
    or its SequenceTooLongError."""
    from device_runtime import BucketedSession, SequenceTooLongError
    from models_zoo import data, get_model

    folder.mkdir(parents=True)
    shutil.copy(data.bert_vocab_path(), folder / "vocab.txt")
    spec = get_model("tinybert_4l_312d").with_seq_len(BUCKET_LENGTHS[-1])
    model = spec.describe()
    session = BucketedSession(_EntryPoint(BUCKET_LENGTHS[-1]), lambda name: _EntryPoint(int(name[3:])))
    assert session.lengths == BUCKET_LENGTHS
    texts = [(s, None) for s in data.SAMPLE_SENTENCES + data.CALIBRATION_SENTENCES + EXTRA_SENTENCES]
    texts += list(data.SAMPLE_SENTENCE_PAIRS)
    cases = []
    for max_len in (BUCKET_LENGTHS[-1], 64):
        prep = {**model["preprocessing"], "seq_len": max_len, "vocab": str(data.bert_vocab_path()),
                "input_names": ["input_ids", "attention_mask", "token_type_ids"]}
        for text, pair in texts:
            feed = data.tokenize(text, prep, pair=pair, pad=False)
            case = {"text": text, "pair": pair, "max_len": max_len,
                    "request": {k: v[0].tolist() for k, v in feed.items()}}
            try:
                length, bucket, padded = session.padded(list(feed.values()))
                case.update(bucket=bucket, entry_point=f"seq{bucket}",
                            padded={k: v[0].tolist() for k, v in zip(feed, padded)})
            except SequenceTooLongError as exc:
                case.update(error=type(exc).__name__, message=str(exc))
            cases.append(case)
    routed = {c.get("bucket") for c in cases}
    assert routed >= set(BUCKET_LENGTHS) and None in routed  # every bucket, and refusals, are exercised
    (folder / "cases.json").write_text(json.dumps(
        {"entry": {"file": "model.pte", "details": {"buckets": BUCKET_DETAILS}}, "model": model,
         "preprocessing": {k: v for k, v in model["preprocessing"].items() if k != "vocab"}, "cases": cases},
        ensure_ascii=False), encoding="utf-8")
    return cases


def write_spec_bundle(root: Path, kind: str, buckets: dict | None = None) -> Path:
    """A bundle in BUNDLE FORMAT v1 with the zoo's real inputs and a stand-in artifact (its bytes sniff as
    .tflite; the JVM replays the expected outputs for it). Written with sdk.device.bundles' own SHA256SUMS writer.
    `buckets`: the artifact's entry lists these sequence buckets (`details.buckets`), as a --seq-lens export's."""
    from device_runtime.bundle import SCHEMA, SCHEMA_VERSION
    from device_runtime.manifest import SCHEMA as MANIFEST_SCHEMA, SCHEMA_VERSION as MANIFEST_VERSION
    from models_zoo import data, get_model
    from sdk.device.bundles import write_sums

    spec = get_model("tinybert_4l_312d").with_seq_len(32) if kind == "text" else None
    root.mkdir(parents=True)
    (root / "artifacts").mkdir()
    artifact = root / "artifacts" / "model.tflite"
    artifact.write_bytes(b"\x1c\x00\x00\x00TFL3" + hashlib.sha256(kind.encode()).digest() * 4)
    rng = np.random.default_rng(11)
    samples, raw = [], {}
    if kind == "text":
        model = {k: v for k, v in spec.describe().items()}
        prep = model["preprocessing"]
        sentences = list(data.SAMPLE_SENTENCES[:4]) + [f"{a}\t{b}" for a, b in data.SAMPLE_SENTENCE_PAIRS[:2]]
        feeds = [data.tokenize(s.split("\t")[0], prep, pair=s.split("\t")[1] if "\t" in s else None)
                 for s in sentences]
        sources = sentences
        (root / "raw").mkdir()
        (root / "raw" / "sentences.txt").write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
        raw = {"sentences": "raw/sentences.txt"}
        shutil.copy(data.bert_vocab_path(), root / "vocab.txt")
        labels = ["negative", "positive"]
    else:
        prep = {"kind": "image", "size": [64, 64], "crop_pct": 0.875, "interpolation": "bicubic",
                "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
        model = {"name": "stand_in_vision", "family": "test", "task": "image-classification",
                 "inputs": [{"name": "pixel_values", "shape": [1, 3, 64, 64], "dtype": "float32",
                             "dynamic_axes": {}, "value_range": None}],
                 "outputs": ["logits"], "default_precision": "fp32", "int8_scheme": "static", "preprocessing": prep}
        from PIL import Image

        (root / "raw").mkdir()
        photos = data.photo_paths()[:3]
        for p in photos:
            Image.open(p).save(root / "raw" / f"{p.stem}.png", format="PNG")
        feeds = [{"pixel_values": data.preprocess_image(root / "raw" / f"{p.stem}.png", prep)} for p in photos]
        sources = [p.name for p in photos]
        raw = {"images": [f"raw/{p.stem}.png" for p in photos]}
        labels = [f"class {i}" for i in range(5)]
    head = rng.normal(0, 1, (int(np.prod(next(iter(feeds[0].values())).shape)), 5)).astype(np.float32)
    for i, (feed, source) in enumerate(zip(feeds, sources)):
        sid = f"{i:03d}"
        rels = {}
        for name, array in feed.items():
            rels[name] = f"inputs/{sid}/{name}.npy"
            (root / rels[name]).parent.mkdir(parents=True, exist_ok=True)
            np.save(root / rels[name], array)
        x = np.concatenate([a.reshape(1, -1).astype(np.float32) for a in feed.values()], axis=1)[:, :head.shape[0]]
        logits = (np.tanh(x / (np.abs(x).max() + 1)) @ head).astype(np.float32)
        for folder in (root / "expected" / "model.tflite" / sid, root / "reference" / sid):
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / "logits.npy", logits)
        samples.append({"id": sid, "source": source, "inputs": rels})
    (root / "labels.txt").write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    entry = _entry(artifact, "fp32")
    if buckets:
        entry["details"] = {"buckets": buckets}
    meta = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "created": "2026-12-02T00:00:00+00:00",
            "model": model,
            "artifacts": [{"file": "artifacts/model.tflite", "entry": entry, "expected": "expected/model.tflite",
                           "tolerance": {"atol": 1e-4, "min_sqnr_db": None, "rtol": 1e-5, "min_cosine": None,
                                         "min_top1": None}}],
            "samples": samples, "raw": raw, "labels": "labels.txt",
            **({"vocab": "vocab.txt"} if kind == "text" else {})}
    (root / "bundle.json").write_text(json.dumps(meta, indent=2))
    manifest = {"schema": MANIFEST_SCHEMA, "schema_version": MANIFEST_VERSION, "updated": meta["created"],
                "model": {**model, "labels": labels}, "artifacts": {"model.tflite": entry}, "failed": []}
    (root / "report.json").write_text(json.dumps(manifest, indent=2))
    write_sums(root)
    return root


def write_bundle_fixtures(folder: Path) -> list[dict]:
    """Good bundles (folder, zip, text, image) and tampered copies; each case says which file must be named."""
    from device_runtime.bundle import BundleError, open_bundle
    from sdk.device.bundles import write_sums

    folder.mkdir(parents=True)
    text = write_spec_bundle(folder / "text", "text")
    image = write_spec_bundle(folder / "image", "image")
    write_spec_bundle(folder / "text-bucketed", "text", buckets=BUCKET_DETAILS)
    cases = [{"name": "text", "path": "text", "refused_file": None, "passes": True},
             {"name": "text-bucketed", "path": "text-bucketed", "refused_file": None, "passes": True},
             {"name": "image", "path": "image", "refused_file": None, "passes": True},
             {"name": "image-noisy", "path": "image", "refused_file": None, "passes": False, "noise": 0.05}]
    with zipfile.ZipFile(folder / "text.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(text.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(text).as_posix())
    cases.append({"name": "text-zip", "path": "text.zip", "refused_file": None, "passes": True})

    def tampered(name, refused, change, base=image, python_match=None):
        dest = folder / name
        shutil.copytree(base, dest)
        change(dest)
        cases.append({"name": name, "path": name, "refused_file": refused,
                      "python_match": python_match or refused.replace(".", r"\.")})

    def flip(path):
        data = bytearray(path.read_bytes())
        data[-1] ^= 1
        path.write_bytes(bytes(data))

    tampered("changed-expected", "expected/model.tflite/001/logits.npy",
             lambda d: flip(d / "expected/model.tflite/001/logits.npy"))
    tampered("changed-artifact", "artifacts/model.tflite", lambda d: flip(d / "artifacts/model.tflite"))
    tampered("extra-artifact", "artifacts/evil.tflite",
             lambda d: (d / "artifacts/evil.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3evil"))
    tampered("missing-input", "inputs/002/pixel_values.npy", lambda d: (d / "inputs/002/pixel_values.npy").unlink())

    def newer(d):
        meta = json.loads((d / "bundle.json").read_text())
        meta["schema_version"] = 2
        (d / "bundle.json").write_text(json.dumps(meta))
        write_sums(d)  # checksums consistent: the version alone must refuse it
    tampered("newer-version", "bundle.json", newer, python_match="version 2")

    def other_schema(d):
        meta = json.loads((d / "bundle.json").read_text())
        meta["schema"] = "something.else"
        (d / "bundle.json").write_text(json.dumps(meta))
        write_sums(d)
    tampered("other-schema", "bundle.json", other_schema)
    tampered("no-sums", "SHA256SUMS", lambda d: (d / "SHA256SUMS").unlink())
    with zipfile.ZipFile(folder / "tampered.zip", "w") as zf:
        for p in sorted(text.rglob("*")):
            if p.is_file():
                body = p.read_bytes()
                zf.writestr(p.relative_to(text).as_posix(), body + b" " if p.name == "sentences.txt" else body)
    cases.append({"name": "tampered-zip", "path": "tampered.zip", "refused_file": "raw/sentences.txt",
                  "python_match": "raw/sentences"})
    for case in cases:  # the Python reader agrees on every case
        if case["refused_file"] is None:
            open_bundle(folder / case["path"]).close()
        else:
            with pytest.raises(BundleError, match=case["python_match"]):
                open_bundle(folder / case["path"])
    (folder / "cases.json").write_text(json.dumps({"cases": cases}))
    return cases


def bench_document_keys() -> tuple[set, set, set]:
    """The keys of a real `benchmark_artifacts` document (a two-node ONNX graph, benchmarked here)."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import tempfile

    from onnx import TensorProto, helper, numpy_helper

    from device_runtime.measure import benchmark_artifacts

    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              [numpy_helper.from_array(np.ones((4, 3), np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny.onnx"
        onnx.save(model, path)
        doc = benchmark_artifacts([str(path)], runs=2, warmup=0)
    return set(doc), set(doc["results"][0]), set(doc["results"][0]["latency"])


# -- the tests ---------------------------------------------------------------------------------------------
def _failures(output: str) -> str:
    return output if "FAILURES!!!" in output or "OK (" not in output else ""


def test_java_core_matches_the_sdk(tmp_path):
    classpath = compiled_core()
    fixtures, out = tmp_path / "fixtures", tmp_path / "out"
    out.mkdir()
    n_tokens = write_tokenizer_fixtures(fixtures / "tokenizer")
    image_cases = write_image_fixtures(fixtures / "images")
    latency_cases = write_latency_fixtures(fixtures / "latency")
    selfcheck_cases = write_selfcheck_fixtures(fixtures / "selfcheck", fixtures / "images", image_cases)
    bundle_cases = write_bundle_fixtures(fixtures / "bundles")
    bucket_cases = write_bucket_fixtures(fixtures / "buckets")
    result = run_junit(classpath, fixtures, out)
    text = result.stdout + result.stderr
    assert result.returncode == 0 and not _failures(text), f"JUnit failed:\n{text[-6000:]}"
    assert "OK (18 tests)" in text, text[-2000:]  # 11 unit tests, 7 parity tests (skipped ones leave no output below)

    # Token ids: identical, case by case (the Java side asserted too; this is what it wrote).
    java_tokens = json.loads((out / "tokenizer.json").read_text())["cases"]
    expected = json.loads((fixtures / "tokenizer" / "cases.json").read_text(encoding="utf-8"))["cases"]
    assert len(java_tokens) == n_tokens > 80
    assert [c["expected"] for c in expected] == java_tokens
    assert any(100 in c["expected"]["input_ids"] for c in expected)  # [UNK] occurs: unknown words are exercised
    assert any(c["expected"]["attention_mask"][-1] == 1 for c in expected)  # and truncation

    # Photos: within 1/255 of the [0, 1] range (before normalisation) on every element.
    images = json.loads((out / "images.json").read_text())["cases"]
    assert len(images) == len(image_cases) >= 24
    worst = max(c["max_abs_diff"] for c in images)
    assert worst <= 1 / 255 / 0.225, images
    assert min(c["exact_fraction"] for c in images) > 0.5, images

    # Latency: the same statistics; a document with the keys of a real `pocketformer bench --json`.
    from device_runtime.measure import add_ratios
    from sdk.measure.bench import format_table

    bench = json.loads((out / "bench.json").read_text())
    doc_keys, result_keys, latency_keys = bench_document_keys()
    assert set(bench) >= doc_keys and set(bench["results"][0]) >= result_keys
    assert set(bench["results"][0]["latency"]) == latency_keys
    for case, result_ in zip(latency_cases, bench["results"]):
        for key, value in case["expected"].items():
            if key in ("mean", "std"):
                assert result_["latency"][key] == pytest.approx(value, rel=1e-13)
            else:
                assert result_["latency"][key] == value, key
    ratios = [r["ratio_vs_first"] for r in bench["results"]]
    assert ratios == [r["ratio_vs_first"] for r in add_ratios(json.loads(json.dumps(bench)))["results"]]
    assert bench["schema"] == "pocketformer.bench/1" and "case5" in format_table(bench)

    # Self-check: the Python verdicts, and the same figures.
    java_checks = json.loads((out / "selfcheck.json").read_text())
    verdicts = {c["name"]: c["python"]["passed"] for c in selfcheck_cases}
    assert verdicts["fp32-other-order"] and verdicts["int8-device"] and not verdicts["int8-broken"]
    assert not verdicts["nan"] and not verdicts["fp16-vs-fp32-host"]
    for case in selfcheck_cases:
        mine = java_checks[case["name"]]
        assert mine["passed"] == case["python"]["passed"] and mine["failures"] == case["python"]["failures"]
        for part in ("lowering", "quantization"):
            want, got = case["python"][part], mine[part]
            if want is None:
                assert got is None
                continue
            for key in ("max_abs_err", "mean_abs_err", "sqnr_db", "cosine", "top1_agreement", "reference_scale"):
                if np.isfinite(want[key]):
                    assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), (case["name"], part, key)
                else:
                    assert got[key] == want[key]
            assert set(got["outputs"]) == {"logits", "embedding"}

    # Bundles: every tampered one refused naming its file; the good ones ran through the app's flow.
    refusals = json.loads((out / "bundles.json").read_text())
    for case in bundle_cases:
        if case["refused_file"]:
            assert case["refused_file"] in refusals[case["name"]]
        else:
            assert refusals[case["name"]] == "accepted"
    runs = json.loads((out / "apprun.json").read_text())
    assert runs["image"]["results"][0]["self_check"]["passed"] is True
    assert runs["image-noisy"]["results"][0]["self_check"]["passed"] is False
    assert runs["text-zip"]["results"][0]["latency"]["p50"] > 0
    # A bucketed artifact's bundle: its samples (tokenised at the largest length, as the export verified them)
    # ran padded to the bucket that fits through that entry point; a single-length one through the default.
    bucketed = runs["text-bucketed"]
    assert bucketed["results"][0]["buckets"] == {"lengths": BUCKET_LENGTHS, "routed_to": [32] * 6}
    assert set(bucketed["replayed_entry_points"]) == {"seq32"} and bucketed["results"][0]["self_check"]["passed"]
    assert "buckets" not in runs["text"]["results"][0] and runs["text"]["replayed_entry_points"] == []

    # Sequence buckets: the Java core routed, padded and refused each request as BucketedSession did.
    java_buckets = json.loads((out / "buckets.json").read_text())
    assert len(java_buckets) == len(bucket_cases) > 50
    for case, mine in zip(bucket_cases, java_buckets):
        if "error" in case:
            largest = BUCKET_LENGTHS[-1]
            assert f"{len(case['request']['input_ids'])} tokens is longer than the largest bucket" in mine["error"]
            assert f", {largest} (buckets: 8, 16, 32)" in mine["error"] and f"{largest}" in case["message"]
        else:
            assert mine == {"bucket": case["bucket"], "entry_point": case["entry_point"], "padded": case["padded"]}


# -- `pocketformer bench BUNDLE --device adb:SERIAL --app`, up to the device ---------------------------------
# test_remote's stand-in adb (a fake device folder; shell commands run against it), with what the app adds:
# folder pushes and pulls, `pm list packages`, and `am start`, which runs the app's launch code on the JVM
# (dev.pocketformer.core.StandInApp: the core's LaunchOptions, Bundle, AppRun and JSON, with the host's outputs
# replayed in place of ExecuTorch or LiteRT) in the background, as the app runs after `am start` returns.
APP_ADB = r'''#!PYTHON
import os, shlex, shutil, subprocess, sys
root, log = os.environ["FAKE_ADB_ROOT"], os.environ["FAKE_ADB_LOG"]
argv = sys.argv[1:]
serial = argv[1] if argv[:1] == ["-s"] else ""
args = argv[2:] if serial else argv
def local(path):
    return os.path.join(root, path.lstrip("/"))
def mapped(text):
    return text.replace("/sdcard/", local("/sdcard") + "/")
def note():
    with open(log, "a") as fh:
        fh.write(shlex.join(["adb", *(["-s", serial] if serial else []), *args]) + "\n")
def delegate(rest):  # everything else: test_remote's stand-in, unchanged (it logs the mapped paths apart)
    note()
    env = {**os.environ, "FAKE_ADB_LOG": log + ".mapped"}
    os.execve(sys.executable, [sys.executable, os.environ["FAKE_ADB_STANDIN"], *(["-s", serial] if serial else []),
                               *rest], env)
if serial in ("missing", "locked"):
    delegate(args)
inner = ""
if args[0] == "shell":  # the transport may wrap a command in the device's `timeout ... sh -c CMD`
    lexer = shlex.shlex(args[1], posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = list(lexer)
    inner = words[words.index("-c") + 1] if "sh" in words and "-c" in words else args[1]
if args[0] == "push":
    note()
    dest = local(args[2])
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    (shutil.copytree if os.path.isdir(args[1]) else shutil.copy)(args[1], dest)
    print(f"{args[1]}: pushed.")
elif args[0] == "pull":
    note()
    shutil.copy(local(args[1]), args[2])
elif inner.startswith("pm list packages"):
    note()
    if not os.environ.get("FAKE_APP_ABSENT"):
        print("package:dev.pocketformer.demo")
elif inner.startswith("am "):
    note()
    words = shlex.split(inner)
    if words[1] == "start" and not os.environ.get("FAKE_APP_HANG"):
        extras = [local(w) if w.startswith("/sdcard/") else w for w in words]
        subprocess.Popen(["java", "-cp", os.environ["FAKE_APP_CLASSPATH"], "dev.pocketformer.core.StandInApp", *extras],
                         start_new_session=True, stdout=subprocess.DEVNULL, stderr=open(log + ".app", "a"))
        print("Starting: Intent { cmp=dev.pocketformer.demo/.BenchActivity }\nStatus: ok")
else:
    delegate([args[0], mapped(args[1])] if args[0] == "shell" else args)
'''


@pytest.fixture
def app_adb(tmp_path, monkeypatch):
    from test_remote import FAKE_ADB

    classpath = compiled_core()
    bindir, device = tmp_path / "bin", tmp_path / "device"
    bindir.mkdir()
    device.mkdir()
    standin = bindir / "remote_standin_adb"
    standin.write_text(FAKE_ADB.replace("PYTHON", sys.executable, 1))
    adb = bindir / "adb"
    adb.write_text(APP_ADB.replace("PYTHON", sys.executable, 1))
    adb.chmod(0o755)
    log = tmp_path / "adb.log"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    for key, value in (("FAKE_ADB_ROOT", device), ("FAKE_ADB_LOG", log), ("FAKE_ADB_STANDIN", standin),
                       ("FAKE_APP_CLASSPATH", classpath), ("STANDIN_DEVICE", "adb:R58M123ABC")):
        monkeypatch.setenv(key, str(value))
    bundle = write_spec_bundle(tmp_path / "bundles" / "text", "text")
    return {"log": log, "device": device, "bundle": bundle, "tmp": tmp_path}


def test_bench_app_over_the_stand_in_adb(app_adb, monkeypatch, capsys):
    import sdk.device.android
    from device_runtime.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_PARITY, EXIT_UNSUPPORTED
    from device_runtime.remote.transport import RemoteError
    from sdk.device.android import app_benchmark
    from sdk.cli.app import main

    monkeypatch.setattr(sdk.device.android, "DEFAULT_TIMEOUT_S", 120)  # a broken stand-in fails, not hangs

    out = app_adb["tmp"] / "bench.json"
    bundle = app_adb["bundle"]
    code = main(["bench", str(bundle), "--device", "adb:R58M123ABC", "--app", "--runs", "9", "--warmup", "1",
                 "--threads", "2", "--json", str(out), "--quiet"])
    printed = capsys.readouterr()
    assert code == EXIT_OK, printed.err
    calls = app_adb["log"].read_text().splitlines()
    assert all(c.startswith("adb -s R58M123ABC ") for c in calls)
    start = next(c for c in calls if "am start" in c).replace("'\"'\"'", "")
    for extra in ("-n dev.pocketformer.demo/.BenchActivity", "--ei runs 9", "--ei warmup 1", "--ei threads 2",
                  "--es bundle /sdcard/Android/data/dev.pocketformer.demo/files/pocketformer."):
        assert extra in start, start
    push = next(c for c in calls if " push " in c)
    workdir = push.split()[-1].rsplit("/", 1)[0]
    assert any(f"rm -rf {workdir}" in c for c in calls) and not (app_adb["device"] / workdir.lstrip("/")).exists()
    doc = json.loads(out.read_text())
    result = doc["results"][0]
    assert doc["schema"] == "pocketformer.bench/1" and doc["device"] == "adb:R58M123ABC"
    assert result["path"] == str(bundle / "artifacts" / "model.tflite") and result["runs"] == 9
    assert result["remote_path"].startswith(workdir) and result["format"] == "tflite"
    assert result["self_check"]["passed"] is True and result["device_verified"] is True
    assert result["self_check"]["lowering"]["samples"] == 6 and result["model"] == "tinybert_4l_312d"
    assert set(result["latency"]) >= {"p50", "p90", "p99", "mean"} and result["ratio_vs_first"] == 1.0
    assert "self-check model.tflite: passed" in printed.out

    monkeypatch.setenv("STANDIN_NOISE", "0.05")  # outputs off by 5% of their scale: the self-check fails
    assert main(["bench", str(bundle), "--device", "adb:R58M123ABC", "--app", "--runs", "3", "--quiet"]) == EXIT_PARITY
    assert "FAILED" in capsys.readouterr().out
    monkeypatch.delenv("STANDIN_NOISE")

    with pytest.raises(Exception, match="holds no artifact this app runs"):  # the app's own error comes back
        app_benchmark("adb:R58M123ABC", [bundle], runs=2, artifact="other.tflite")
    monkeypatch.setenv("FAKE_APP_HANG", "1")
    with pytest.raises(RemoteError, match="no result within"):
        app_benchmark("adb:R58M123ABC", [bundle], runs=2, timeout=1.0, poll_s=0.2)
    assert "am force-stop dev.pocketformer.demo" in app_adb["log"].read_text()
    monkeypatch.setenv("FAKE_APP_ABSENT", "1")
    assert main(["bench", str(bundle), "--device", "adb:R58M123ABC", "--app"]) == EXIT_UNSUPPORTED
    assert "installDebug" in capsys.readouterr().err
    assert main(["bench", str(bundle), "--device", "ssh://pi@host", "--app"]) == EXIT_BAD_INPUT
    # a bundle changed after writing is refused here, before anything is pushed
    (bundle / "labels.txt").write_text("tampered\n")
    monkeypatch.delenv("FAKE_APP_ABSENT")
    assert main(["bench", str(bundle), "--device", "adb:R58M123ABC", "--app"]) == EXIT_BAD_INPUT
    assert "labels.txt" in capsys.readouterr().err


@pytest.mark.slow  # two real exports (131 s here): run with -m slow
def test_real_bundles_open_and_run_in_the_java_core(export_tiny, tmp_path):
    """Bundles written by `sdk.device.bundles.write_bundle` from real tiny exports: the core verifies them, its tokenizer
    and image preprocessing reproduce their bundled inputs from their raw samples, and the app's flow runs them."""
    from sdk.device.bundles import write_bundle

    classpath = compiled_core()
    folder = tmp_path / "fixtures" / "bundles"
    folder.mkdir(parents=True)
    cases = []
    for model, fmt in (("tinybert_4l_312d", "tflite"), ("deit_tiny_distilled_patch16_224", "tflite")):
        export = Path(export_tiny(model, fmt, "fp32").path).parent
        write_bundle([export], folder / model)
        write_bundle([export], folder / f"{model}.zip", zip_=True)
        cases += [{"name": model, "path": model, "refused_file": None, "passes": True},
                  {"name": f"{model}-zip", "path": f"{model}.zip", "refused_file": None, "passes": True}]
    (folder / "cases.json").write_text(json.dumps({"cases": cases}))
    out = tmp_path / "out"
    out.mkdir()
    result = run_junit(classpath, tmp_path / "fixtures", out, ("BundleParityTest",))
    assert result.returncode == 0 and "OK (2 tests)" in result.stdout, result.stdout[-4000:] + result.stderr[-2000:]
    runs = json.loads((out / "apprun.json").read_text())
    assert runs["tinybert_4l_312d"]["results"][0]["self_check"]["lowering"]["samples"] == 12
    assert runs["deit_tiny_distilled_patch16_224-zip"]["results"][0]["self_check"]["passed"] is True
