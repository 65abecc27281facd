"""Ascend `.om` through ATC (CANN): ATC-ready ONNX -> operator pre-check -> typed `atc` command -> atc run.

1. ATC-ready ONNX. The TorchScript exporter at opset 11 by default (inside every CANN release's parser range;
   a parameter, 8..18), eager attention, static shapes, or the dims ATC will vary left dynamic (`-1`) for fixed
   profile sets: the BERT family's sequence lengths (`--dynamic_dims`) or batch sizes (`--dynamic_batch_size`).
   The ONNX is checked (`onnx.checker`) and run on ONNX Runtime against PyTorch on the real sample inputs, at
   every profile, before anything else: what goes into ATC is verified, even where the `.om` cannot be.
2. Pre-check. Every node is looked up the way ATC's parser does it (`ai.onnx::<opset>::<op>`) in
   `converters/data/atc_onnx_ops.json` (from the CANN operator list; sources named in the file). Operators ATC
   has no parser for are listed, with a rewrite where one is known, before ATC runs: the E19010 ("No parser is
   registered for Op") that otherwise appears deep in an ATC conversion.
3. The atc command, built from typed options (`AtcOptions`) and refused before running anything when the
   combination is invalid (unknown SoC, --dynamic_dims with --dynamic_batch_size, AIPP on ND token inputs, ...).
4. atc runs when it is on PATH (or under $ASCEND_TOOLKIT_HOME); its log is kept and its error codes are
   translated. With `--atc-script` the converter instead writes a folder to run on a CANN host: the ONNX, the
   exact command as `atc.sh`, the AIPP config if any, a README and a JSON manifest.

Precision. ATC decides the arithmetic on the NPU with --precision_mode; the Pocketformer precision names it:
- fp16 (default mode `allow_fp32_to_fp16`): operators run in fp32 where the AI Core has an fp32 kernel, else
  fp16 (matrix units of Ascend 310/310P are fp16). The usual deployment: fast, fp16-level error (~1e-3 rel.).
  `force_fp16` (everything fp16) and the mixed-precision modes are also fp16-class.
- fp32 (default mode `must_keep_origin_dtype`): every operator keeps the ONNX's fp32; ATC fails to compile
  where a SoC has no fp32 kernel for an operator (e.g. Conv/MatMul cubes on Ascend310). For accuracy-critical
  use on SoCs with fp32 cubes (Ascend910B); slower. `force_fp32` is also fp32-class.
A mode of the other class is refused, so the label in report.json says what the device computes.
- int8-static: AMCT (amct_onnx, from CANN) calibrates the ATC-ready ONNX on the spec's real samples (or
  `--calibration`) and writes a deploy model that ATC compiles with int8 cube operators; the precision mode
  then sets what the unquantized operators compute in. Where AMCT is importable it runs here and its
  fake-quant model is checked against PyTorch on ONNX Runtime before ATC; with `--atc-script` the folder gets
  the calibration feeds (`calibration.npz`) and `amct_calibrate.py`, which `atc.sh` runs first on the CANN
  host. Ascend has no dynamic activation quantization, so int8-dynamic (the BERT family's `int8`) is refused.

Nothing here has CANN or an Ascend device: no `.om` is produced or run on this host, and no test claims one.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from converters.base import Conversion, ConversionError, Converter, UnsupportedError, register_converter

TABLE_PATH = Path(__file__).with_name("data") / "atc_onnx_ops.json"
DEFAULT_OPSET = 11
ATC_MAX_OPSET = 18
ATC_MIN_OPSET = 8
# Names `--soc_version` accepts: "Ascend" + the chip name `npu-smi info` prints.
KNOWN_SOCS = (
    "Ascend310", "Ascend310P1", "Ascend310P3", "Ascend310P5", "Ascend310P7",
    "Ascend310B1", "Ascend310B2", "Ascend310B3", "Ascend310B4",
    "Ascend610", "Ascend910", "Ascend910A", "Ascend910B", "Ascend910ProA", "Ascend910ProB", "Ascend910PremiumA",
    "Ascend910B1", "Ascend910B2", "Ascend910B2C", "Ascend910B3", "Ascend910B4", "Ascend910B4-1",
    "Ascend910_9391", "Ascend910_9392", "Ascend910_9381", "Ascend910_9382", "Ascend910_9372", "Ascend910_9362",
)
# --precision_mode values and the precision they compute in (bf16 modes have no Pocketformer precision).
PRECISION_MODES = {
    "allow_fp32_to_fp16": "fp16", "force_fp16": "fp16", "allow_mix_precision": "fp16",
    "allow_mix_precision_fp16": "fp16", "cube_fp16in_fp32out": "fp16",
    "must_keep_origin_dtype": "fp32", "force_fp32": "fp32",
    "allow_mix_precision_bf16": "bf16", "allow_fp32_to_bf16": "bf16",
}
DEFAULT_PRECISION_MODE = {"fp16": "allow_fp32_to_fp16", "fp32": "must_keep_origin_dtype",
                          "int8-static": "allow_fp32_to_fp16"}  # int8: the mode is for the unquantized ops
AMCT_PREFIX = "amct/model"  # amct_calibrate writes amct/model_deploy_model.onnx for ATC
INPUT_FORMATS = ("NCHW", "ND", "NCDHW")  # ONNX models; NHWC is TensorFlow-only in ATC
LOG_LEVELS = ("debug", "info", "warning", "error", "null")
MIN_PROFILES, MAX_PROFILES = 2, 100  # ATC's limits on --dynamic_batch_size / --dynamic_dims profiles (E10035/6)
PARITY_PROFILES = 4  # profiles of a dynamic ONNX checked on ONNX Runtime (first, last and two between)

# ATC / GE error codes and what to do about them (messages from CANN's GE error-code list and ONNX parser).
ATC_ERRORS = {
    "E10001": "an atc argument has an invalid value: check the flag named in the message",
    "E10002": "--input_shape is malformed: use name1:n,c,h,w;name2:n,c",
    "E10004": "an atc argument is empty",
    "E10007": "a required atc argument is missing",
    "E10009": "--dynamic_batch_size, --dynamic_image_size, --input_shape_range and --dynamic_dims are mutually "
              "exclusive: keep one",
    "E10010": "--log must be one of debug, info, warning, error, null",
    "E10011": "--input_shape has a -1 but no dynamic option: add --dynamic_batch_size or --dynamic_dims, or use "
              "static shapes",
    "E10016": "a node named on the command line is not in the model",
    "E10018": "with --dynamic_batch_size only the batch axis (N) may be -1 in --input_shape",
    "E10031": "--dynamic_batch_size is set but no input has batch -1 in --input_shape",
    "E10035": "too few dynamic profiles (ATC needs at least 2)",
    "E10036": "too many dynamic profiles (ATC allows at most 100)",
    "E10037": "the dynamic profiles have different lengths",
    "E10039": "the dynamic profiles contain duplicates",
    "E10040": "a dynamic option is set but --input_shape has no -1 axis for it",
    "E10041": "ATC could not load the model file: is it a complete ONNX file, and is --framework=5?",
    "E10045": "the number of -1 axes in --input_shape does not match the values per --dynamic_dims profile",
    "E10046": "the number of -1 axes in --input_shape does not match the values per --dynamic_dims profile",
    "E10052": "the AIPP configuration (--insert_op_conf) is invalid",
    "E10501": "an operator's IR is not registered: is ASCEND_OPP_PATH set (source set_env.sh), and does this "
              "CANN release support the operator on this SoC?",
    "E13001": "ATC could not open a file: check paths and permissions",
    "E13005": "ATC could not parse a file: a protobuf version mismatch or a corrupt model",
    "E13010": "no operator plugin is registered for an operator: a custom op needs its plugin installed",
    "E19010": "ATC's ONNX parser has no parser for an operator at this opset: run Pocketformer's pre-check, "
              "re-export at opset 11, or rewrite the operator (see converters/data/atc_onnx_ops.json)",
    "E19999": "an internal ATC/GE error: rerun with --log=debug and read the plog",
    "EZ9999": "an AI Core operator failed to compile or validate on this SoC: try another --precision_mode or "
              "--soc_version, or check the operator's dtype/shape limits",
}
_ERROR_LINE = re.compile(r"\b(E[0-9A-Z]\d{4}|W\d{5})\s*:\s*(.*)")


class AtcOptionError(UnsupportedError):
    """An atc option, or combination of options, that ATC would refuse (refused before anything runs)."""


class UnsupportedOperatorError(ConversionError):
    """The ATC-ready ONNX contains operators ATC has no parser for (E19010 avoided)."""

    def __init__(self, message: str, report: "PrecheckReport") -> None:
        super().__init__(message)
        self.report = report


class AtcError(ConversionError):
    """atc ran and failed; `codes` holds the error codes found in its log, `log_path` the full log."""

    def __init__(self, message: str, codes: list[dict], log_path: Path | None) -> None:
        super().__init__(message)
        self.codes = codes
        self.log_path = log_path


# -- the operator table and the pre-check --------------------------------------------------------------
@lru_cache(maxsize=4)
def load_op_table(path: str | None = None) -> dict[str, Any]:
    with open(path or TABLE_PATH, encoding="utf-8") as fh:
        return json.load(fh)


@dataclass(frozen=True)
class UnsupportedOp:
    op_type: str
    domain: str
    opset: int
    count: int
    nodes: tuple[str, ...]          # the first few node names
    reason: str
    rewrite: str | None

    def describe(self) -> str:
        where = f"{self.domain}::{self.opset}::{self.op_type}"
        plural = "s" if self.count != 1 else ""
        text = f"{where} ({self.count} node{plural}, e.g. {', '.join(self.nodes[:3])}): {self.reason}"
        return text + (f"; fix: {self.rewrite}" if self.rewrite else "")


@dataclass
class PrecheckReport:
    opset: int
    ops: dict[str, int]                       # op_type (domain-prefixed when not ai.onnx) -> count
    unsupported: list[UnsupportedOp] = field(default_factory=list)
    table_release: str = ""

    @property
    def passed(self) -> bool:
        return not self.unsupported

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "opset": self.opset, "ops": self.ops, "table": self.table_release,
                "unsupported": [dataclasses.asdict(u) for u in self.unsupported]}


def _iter_nodes(graph) -> Iterable:
    for node in graph.node:
        yield node
        for attr in node.attribute:  # If/Loop/Scan bodies
            if attr.g is not None and len(attr.g.node):
                yield from _iter_nodes(attr.g)
            for sub in attr.graphs:
                yield from _iter_nodes(sub)


def precheck(model, table: dict[str, Any] | None = None) -> PrecheckReport:
    """Look every node up as ATC's ONNX parser does; list what it has no parser for, with known rewrites."""
    import onnx

    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(str(model), load_external_data=False)
    table = table or load_op_table()
    opsets = {(e.domain or "ai.onnx"): int(e.version) for e in model.opset_import}
    main_opset = opsets.get("ai.onnx", 0)
    supported = table["operators"]
    known_bad = table.get("known_unsupported", {})
    hints = table.get("domain_hints", {})
    counts: Counter = Counter()
    names: dict[tuple[str, str], list[str]] = {}
    for node in _iter_nodes(model.graph):
        domain = node.domain or "ai.onnx"
        key = (domain, node.op_type)
        counts[key] += 1
        names.setdefault(key, []).append(node.name or f"<unnamed {node.op_type}>")
    report = PrecheckReport(main_opset, {(op if d == "ai.onnx" else f"{d}:{op}"): n
                                         for (d, op), n in sorted(counts.items())},
                            table_release=table.get("reference_release", ""))
    for (domain, op), n in sorted(counts.items()):
        opset = opsets.get(domain, main_opset)
        rewrite = known_bad.get(op)
        if domain != "ai.onnx":
            reason = f"ATC parses the ai.onnx domain only, not {domain}"
            rewrite = rewrite or hints.get(domain) or hints.get("*")
        elif op not in supported:
            reason = "ATC has no parser for this operator"
        else:
            lo, hi = supported[op]
            if lo <= opset <= hi:
                continue
            reason = f"ATC parses {op} at opsets {lo}..{hi} only"
            rewrite = rewrite or (f"export at an opset in {max(lo, ATC_MIN_OPSET)}..{hi} "
                                  f"(Pocketformer: --opset {max(lo, DEFAULT_OPSET) if hi >= DEFAULT_OPSET else hi})")
        report.unsupported.append(UnsupportedOp(op, domain, opset, n, tuple(names[(domain, op)][:5]), reason,
                                                rewrite))
    return report


# -- the atc command -----------------------------------------------------------------------------------
def parse_int_list(value: str | Sequence[int] | None, what: str) -> tuple[int, ...]:
    if value is None or value == "" or value == ():
        return ()
    if isinstance(value, str):
        try:
            return tuple(int(v) for v in value.replace(" ", "").split(",") if v)
        except ValueError:
            raise AtcOptionError(f"{what} must be comma-separated integers, got {value!r}") from None
    return tuple(int(v) for v in value)


def parse_profiles(value: str | Sequence | None, what: str) -> tuple[tuple[int, ...], ...]:
    """ATC's profile syntax "a,b;c,d" (or a list of lists) -> ((a, b), (c, d))."""
    if value is None or value == "" or value == ():
        return ()
    if isinstance(value, str):
        return tuple(parse_int_list(p, what) for p in value.split(";") if p.strip())
    return tuple(parse_int_list(p, what) if not isinstance(p, int) else (int(p),) for p in value)


@dataclass(frozen=True)
class AtcOptions:
    """Typed `atc` options for an ONNX model. `validate()` refuses what ATC would refuse, before it runs."""

    model: str
    output: str                                   # path prefix; ATC appends .om
    soc_version: str
    input_shape: dict[str, tuple[int, ...]]       # -1 on the axes a dynamic option varies
    input_format: str = "NCHW"
    precision_mode: str = "allow_fp32_to_fp16"
    insert_op_conf: str | None = None             # AIPP config file
    dynamic_dims: tuple[tuple[int, ...], ...] = ()
    dynamic_batch_size: tuple[int, ...] = ()
    log: str = "error"
    framework: int = 5                            # 5 = ONNX

    def validate(self) -> "AtcOptions":
        if self.framework != 5:
            raise AtcOptionError(f"--framework={self.framework}: this builder writes ONNX commands (--framework=5)")
        if not self.soc_version:
            raise AtcOptionError("--soc_version is required: the NPU's chip name ('Ascend' + the name `npu-smi "
                                 f"info` prints), one of: {', '.join(KNOWN_SOCS)}")
        if self.soc_version not in KNOWN_SOCS:
            close = [s for s in KNOWN_SOCS if s.lower().startswith(self.soc_version.lower()[:9])]
            raise AtcOptionError(f"unknown --soc_version {self.soc_version!r}" +
                                 (f" (did you mean {', '.join(close)}?)" if close else "") +
                                 f"; known: {', '.join(KNOWN_SOCS)}")
        if self.input_format not in INPUT_FORMATS:
            raise AtcOptionError(f"--input_format={self.input_format} is not valid for ONNX models; use one of "
                                 f"{', '.join(INPUT_FORMATS)} (NHWC is for TensorFlow models)")
        if self.precision_mode not in PRECISION_MODES:
            raise AtcOptionError(f"unknown --precision_mode {self.precision_mode!r}; "
                                 f"one of {', '.join(PRECISION_MODES)}")
        if self.log not in LOG_LEVELS:
            raise AtcOptionError(f"--log={self.log} is not valid; one of {', '.join(LOG_LEVELS)}")
        if not self.input_shape:
            raise AtcOptionError("--input_shape is empty: give every model input's shape")
        for name, shape in self.input_shape.items():
            if not shape or any((not isinstance(d, int)) or d == 0 or d < -1 for d in shape):
                raise AtcOptionError(f"--input_shape {name}:{shape}: dims must be positive integers or -1")
        if self.dynamic_dims and self.dynamic_batch_size:
            raise AtcOptionError("--dynamic_dims and --dynamic_batch_size are mutually exclusive (ATC E10009): "
                                 "choose sequence-length profiles or batch-size profiles, not both")
        if self.insert_op_conf and self.input_format == "ND":
            raise AtcOptionError("AIPP (--insert_op_conf) preprocesses images; it cannot apply to ND inputs such "
                                 "as token ids: drop AIPP, or use it on an NCHW image model")
        if self.insert_op_conf:
            shapes = list(self.input_shape.values())
            if len(shapes) != 1 or len(shapes[0]) != 4 or shapes[0][1] != 3:
                raise AtcOptionError("AIPP needs a single NCHW image input with 3 channels; the model has "
                                     f"{self.input_shape}")
        minus_ones = sum(d == -1 for shape in self.input_shape.values() for d in shape)
        if self.dynamic_batch_size:
            self._check_profiles([(b,) for b in self.dynamic_batch_size], "--dynamic_batch_size")
            for name, shape in self.input_shape.items():
                if shape[0] != -1 or any(d == -1 for d in shape[1:]):
                    raise AtcOptionError(f"with --dynamic_batch_size every input's batch axis, and only it, is -1 "
                                         f"(ATC E10018/E10031); {name} is {list(shape)}")
        elif self.dynamic_dims:
            if self.input_format != "ND":
                raise AtcOptionError("--dynamic_dims applies to ND inputs (e.g. token ids); for NCHW images use "
                                     "--dynamic_batch_size")
            self._check_profiles(self.dynamic_dims, "--dynamic_dims")
            if minus_ones == 0:
                raise AtcOptionError("--dynamic_dims needs -1 axes in --input_shape (ATC E10040)")
            for profile in self.dynamic_dims:
                if len(profile) != minus_ones:
                    raise AtcOptionError(f"each --dynamic_dims profile needs one value per -1 axis of --input_shape "
                                         f"({minus_ones}); {list(profile)} has {len(profile)} (ATC E10045)")
        elif minus_ones:
            raise AtcOptionError("--input_shape has -1 axes but no --dynamic_dims or --dynamic_batch_size "
                                 "(ATC E10011): give static shapes or a set of profiles")
        if not self.model.endswith(".onnx"):
            raise AtcOptionError(f"--model must be the .onnx file, got {self.model!r}")
        if self.output.endswith(".om"):
            raise AtcOptionError("--output is a path prefix: ATC appends .om itself")
        return self

    @staticmethod
    def _check_profiles(profiles: Sequence[Sequence[int]], flag: str) -> None:
        if not MIN_PROFILES <= len(profiles) <= MAX_PROFILES:
            raise AtcOptionError(f"{flag} needs {MIN_PROFILES}..{MAX_PROFILES} profiles, got {len(profiles)} "
                                 f"(ATC E10035/E10036); one profile is a static shape")
        if any(v <= 0 for p in profiles for v in p):
            raise AtcOptionError(f"{flag} values must be positive (ATC E10038)")
        if len({tuple(p) for p in profiles}) != len(profiles):
            raise AtcOptionError(f"{flag} has duplicate profiles (ATC E10039)")
        if len({len(p) for p in profiles}) != 1:
            raise AtcOptionError(f"{flag} profiles have different lengths (ATC E10037)")

    def argv(self, atc: str = "atc") -> list[str]:
        self.validate()
        shape = ";".join(f"{name}:{','.join(str(d) for d in dims)}" for name, dims in self.input_shape.items())
        args = [atc, f"--framework={self.framework}", f"--model={self.model}", f"--output={self.output}",
                f"--soc_version={self.soc_version}", f"--input_shape={shape}", f"--input_format={self.input_format}",
                f"--precision_mode={self.precision_mode}", f"--log={self.log}"]
        if self.insert_op_conf:
            args.append(f"--insert_op_conf={self.insert_op_conf}")
        if self.dynamic_dims:
            args.append("--dynamic_dims=" + ";".join(",".join(str(v) for v in p) for p in self.dynamic_dims))
        if self.dynamic_batch_size:
            args.append("--dynamic_batch_size=" + ",".join(str(b) for b in self.dynamic_batch_size))
        return args

    def shell(self, atc: str = "atc") -> str:
        return shlex.join(self.argv(atc))


def aipp_config(preprocessing: dict[str, Any]) -> str:
    """A static AIPP config: RGB888 uint8 image (already resized/cropped to the model size) -> normalised input.

    AIPP computes out = (in - mean_chn - min_chn) * var_reci_chn per channel; timm's (x/255 - mean) / std is
    min_chn = 255 * mean, var_reci_chn = 1 / (255 * std), mean_chn = 0.
    """
    height, width = preprocessing["size"]
    mean, std = preprocessing["mean"], preprocessing["std"]
    lines = ["# Pocketformer AIPP: RGB888 uint8 HWC image of the model's size -> normalised float NCHW input,",
             "# computed on the AI Core. Resize and centre-crop stay on the host (timm's eval transform).",
             "aipp_op {", "    aipp_mode : static", "    related_input_rank : 0", "    input_format : RGB888_U8",
             f"    src_image_size_w : {width}", f"    src_image_size_h : {height}",
             "    csc_switch : false", "    rbuv_swap_switch : false"]
    for c in range(3):
        lines.append(f"    mean_chn_{c} : 0")
    for c in range(3):
        lines.append(f"    min_chn_{c} : {255.0 * mean[c]:.6f}")
    for c in range(3):
        lines.append(f"    var_reci_chn_{c} : {1.0 / (255.0 * std[c]):.9f}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def aipp_reference(image_u8: np.ndarray, config: str) -> np.ndarray:
    """What the AIPP config computes, in numpy: HWC uint8 -> NCHW float32 (for tests and docs)."""
    values = dict(re.findall(r"(\w+)\s*:\s*([-\w.]+)", config))
    x = image_u8.astype(np.float32)
    out = np.stack([(x[..., c] - float(values[f"mean_chn_{c}"]) - float(values[f"min_chn_{c}"]))
                    * float(values[f"var_reci_chn_{c}"]) for c in range(3)])
    return out[None].astype(np.float32)


# -- running atc ---------------------------------------------------------------------------------------
def amct_available() -> bool:
    """Whether AMCT for ONNX (`amct_onnx`, shipped with the CANN toolkit) is importable here."""
    from device_runtime.registry import module_present

    return module_present("amct_onnx")


def find_atc() -> str | None:
    """The atc executable: on PATH, else under $ASCEND_TOOLKIT_HOME (bin/, compiler/bin/)."""
    found = shutil.which("atc")
    if found:
        return found
    home = os.environ.get("ASCEND_TOOLKIT_HOME")
    if home:
        for sub in ("bin", "compiler/bin", "atc/bin"):
            candidate = Path(home) / sub / "atc"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def translate_atc_log(log: str) -> list[dict[str, str]]:
    """The error/warning codes in an atc log, each with ATC's message and what to do."""
    found, seen = [], set()
    for line in log.splitlines():
        match = _ERROR_LINE.search(line)
        if not match:
            continue
        code, message = match.group(1), match.group(2).strip()
        if (code, message) in seen:
            continue
        seen.add((code, message))
        found.append({"code": code, "message": message,
                      "meaning": ATC_ERRORS.get(code, "see the CANN error-code reference for this code")})
    return found


def run_atc(options: AtcOptions, log_path: Path, atc: str | None = None, timeout: float = 3600.0) -> Path:
    """Run atc; return the .om it wrote. On failure raise `AtcError` with the translated codes."""
    atc = atc or find_atc()
    if atc is None:
        raise UnsupportedError("atc is not on PATH and ASCEND_TOOLKIT_HOME has no atc: install CANN, "
                               "`source <ascend-toolkit>/set_env.sh`, or use --atc-script")
    argv = options.argv(atc)
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                              timeout=timeout, cwd=str(Path(options.output).parent))
        log, returncode = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as exc:
        log = (exc.stdout or "") if isinstance(exc.stdout, str) else ""
        log_path.write_text(log)
        raise AtcError(f"atc did not finish within {timeout:.0f} s (log: {log_path})", [], log_path) from None
    log_path.write_text(f"$ {shlex.join(argv)}\n{log}")
    produced = sorted(Path(options.output).parent.glob(Path(options.output).name + "*.om"))
    codes = translate_atc_log(log)
    if returncode != 0 or not produced:
        errors = [c for c in codes if c["code"].startswith("E")]
        summary = "; ".join(f"{c['code']}: {c['message'][:300]} -> {c['meaning']}" for c in errors) or \
            (log.strip().splitlines()[-1][:300] if log.strip() else "no output")
        raise AtcError(f"atc failed (exit {returncode}, {time.perf_counter() - start:.1f} s): {summary} "
                       f"(full log: {log_path})", codes, log_path)
    return produced[0]


# -- the converter -------------------------------------------------------------------------------------
def _is_image(spec) -> bool:
    return all(len(s.shape) == 4 for s in spec.input_specs())


@dataclass
class _Plan:
    opset: int
    precision_mode: str
    input_format: str
    dynamic_dims: tuple[tuple[int, ...], ...]
    dynamic_batch_size: tuple[int, ...]
    dims_are_seq_lens: bool
    aipp: bool
    soc_version: str
    log: str

    def atc_options(self, spec, model: str, output: str, aipp_path: str | None) -> AtcOptions:
        shapes = {}
        for s in spec.input_specs():
            dims = list(s.shape)
            if self.dynamic_batch_size:
                dims[0] = -1
            elif self.dynamic_dims:
                for axis in s.dynamic_axes:
                    dims[axis] = -1
            shapes[s.name] = tuple(dims)
        profiles = self.dynamic_dims
        if self.dims_are_seq_lens:  # one value per input per profile: every input shares the sequence length
            per_profile = sum(len(s.dynamic_axes) for s in spec.input_specs())
            profiles = tuple(tuple([p[0]] * per_profile) for p in profiles)
        return AtcOptions(model=model, output=output, soc_version=self.soc_version, input_shape=shapes,
                          input_format=self.input_format, precision_mode=self.precision_mode,
                          insert_op_conf=aipp_path, dynamic_dims=profiles,
                          dynamic_batch_size=self.dynamic_batch_size, log=self.log)


@register_converter
class AscendOmConverter(Converter):
    format = "om"
    suffix = ".om"
    description = "Ascend offline model via ATC (CANN) for Huawei Ascend NPUs; --atc-script for hosts without CANN"
    precisions = ("fp16", "fp32", "int8-static")
    extra = "om"
    required_modules = ("onnx", "onnxruntime")
    cli_options = (
        ("--soc-version", dict(default=None, metavar="SOC",
                               help="Ascend SoC for ATC (required), e.g. Ascend310P3, Ascend310B1, Ascend910B3")),
        ("--opset", dict(type=int, default=None, metavar="N",
                         help="ONNX opset (onnx: 18, the dynamo exporter; below 18 the TorchScript exporter; "
                              "om: 11)")),
        ("--precision-mode", dict(choices=tuple(PRECISION_MODES), default=None,
                                  help="ATC --precision_mode (default: allow_fp32_to_fp16 for --precision fp16, "
                                       "must_keep_origin_dtype for fp32)")),
        ("--aipp", dict(action="store_true", default=False,
                        help="insert AIPP: the .om takes RGB uint8 images and normalises them on the AI Core")),
        ("--dynamic-dims", dict(default=None, metavar="LENS",
                                help="BERT family: sequence lengths to compile, e.g. 32,64,128 (or ATC's own "
                                     "'a,b;c,d' profile syntax)")),
        ("--dynamic-batch-size", dict(default=None, metavar="SIZES",
                                      help="batch sizes to compile, e.g. 1,2,4,8")),
        ("--atc-script", dict(action="store_true", default=False,
                              help="write a folder (ONNX, atc.sh, AIPP config, README) to run on a CANN host "
                                   "instead of running atc here")),
        ("--atc-log", dict(choices=LOG_LEVELS, default=None, help="ATC --log level (default error)")),
    )

    # -- capability --------------------------------------------------------------------------------
    def artifact_name(self, atc_script: bool = False, **_) -> str:
        return "model.atc" if atc_script else "model.om"

    def verify_reason(self, atc_script: bool = False, aipp: bool = False, **_) -> str | None:
        if atc_script:
            return ("--atc-script writes the ATC-ready ONNX and the atc command for a CANN host; no .om is produced "
                    "here, so there is nothing to run (the ONNX itself was checked on ONNX Runtime against PyTorch: "
                    "details.atc_onnx.parity)")
        from device_runtime.registry import module_present

        if not module_present("ais_bench") and not module_present("acl"):
            return ("the .om runs only on an Ascend NPU through ais_bench or pyACL (acl), and neither is on this "
                    "host (the ATC-ready ONNX was checked on ONNX Runtime: details.atc_onnx.parity)")
        if aipp:
            return ("with AIPP the .om takes uint8 RGB images, not the normalised float samples parity feeds; "
                    "compare it on the NPU host with images (the ATC-ready ONNX was checked: details.atc_onnx.parity)")
        return None

    def unsupported_reason(self, spec, precision: str, atc_script: bool = False, **options) -> str | None:
        if precision == "int8-dynamic":
            return ("Ascend has no dynamic activation quantization: its int8 is static, calibrated with AMCT "
                    "(--precision int8-static)")
        reason = super().unsupported_reason(spec, precision)
        if reason:
            return reason
        if precision == "int8-static" and not atc_script and not amct_available():
            return ("int8-static on Ascend needs AMCT (amct_onnx, from the CANN toolkit) to calibrate, and it is not "
                    "importable here; add --atc-script to write a folder that calibrates on the real samples and "
                    "converts on a CANN host")
        if not atc_script and find_atc() is None:
            return ("no CANN toolkit here: `atc` is not on PATH and ASCEND_TOOLKIT_HOME is not set; add --atc-script "
                    "to write the ATC-ready ONNX and the exact atc command as a folder to run on a CANN host")
        if options:
            try:
                self.plan(spec, precision, **options)
            except UnsupportedError as exc:
                return str(exc)
        return None

    def plan(self, spec, precision: str, soc_version: str | None = None, opset: int | None = None,
             precision_mode: str | None = None, aipp: bool = False, dynamic_dims=None, dynamic_batch_size=None,
             atc_log: str | None = None, **_) -> _Plan:
        """Every option resolved and checked against the model, before any slow work."""
        if precision not in self.precisions:
            raise UnsupportedError(f"om does not support precision {precision} "
                                   f"(supports: {', '.join(self.precisions)})")
        opset = int(opset) if opset else DEFAULT_OPSET
        if not ATC_MIN_OPSET <= opset <= ATC_MAX_OPSET:
            raise AtcOptionError(f"opset {opset} is outside ATC's ONNX parser range {ATC_MIN_OPSET}..{ATC_MAX_OPSET}; "
                                 f"use {DEFAULT_OPSET}")
        mode = precision_mode or DEFAULT_PRECISION_MODE[precision]
        if mode not in PRECISION_MODES:
            raise AtcOptionError(f"unknown --precision_mode {mode!r}; one of {', '.join(PRECISION_MODES)}")
        if PRECISION_MODES[mode] != precision and not (precision == "int8-static" and PRECISION_MODES[mode] != "bf16"):
            computes = PRECISION_MODES[mode]
            raise AtcOptionError(f"--precision_mode {mode} computes in {computes}, but --precision is {precision}: "
                                 + ("use --precision fp16" if computes == "fp16" else
                                    "use --precision fp32" if computes == "fp32" else
                                    "bf16 modes have no Pocketformer precision yet"))
        image = _is_image(spec)
        # "32,64,128" or [32, 64, 128]: sequence lengths, one profile each, shared by every token input.
        # "a,b,c;d,e,f" or [[a, b, c], [d, e, f]]: ATC's own profiles, one value per -1 axis.
        dims_are_seq_lens = (isinstance(dynamic_dims, str) and ";" not in dynamic_dims) or (
            isinstance(dynamic_dims, (list, tuple)) and all(isinstance(v, (int, np.integer)) for v in dynamic_dims))
        if dims_are_seq_lens:
            profiles = tuple((v,) for v in parse_int_list(dynamic_dims, "--dynamic-dims"))
        else:
            profiles = parse_profiles(dynamic_dims, "--dynamic-dims")
        batches = parse_int_list(dynamic_batch_size, "--dynamic-batch-size")
        if profiles and not any(s.dynamic_axes for s in spec.input_specs()):
            raise AtcOptionError(f"--dynamic-dims varies the named dynamic axes of the inputs; {spec.name} has none "
                                 f"(image models: use --dynamic-batch-size)")
        plan = _Plan(opset, mode, "NCHW" if image else "ND", profiles, batches, dims_are_seq_lens, bool(aipp),
                     soc_version or "", atc_log or "error")
        # The full command check (SoC, combinations, profile counts), with placeholder paths.
        plan.atc_options(spec, "model.onnx", "model", "aipp.cfg" if aipp else None).validate()
        return plan

    # -- conversion --------------------------------------------------------------------------------
    def convert(self, module, spec, precision, calibration, path: Path, atc_script: bool = False,
                atc_timeout: float = 3600.0, **options) -> Conversion:
        import onnx

        from converters import onnx as onnx_conv

        path = Path(path)
        plan = self.plan(spec, precision, **options)  # refuse bad options before exporting
        atc = None if atc_script else find_atc()
        if not atc_script and atc is None:
            raise UnsupportedError("no CANN toolkit here (atc not on PATH, ASCEND_TOOLKIT_HOME unset): "
                                   "use --atc-script")
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="pf-atc-", dir=path.parent) as tmp:
            folder = path if atc_script else Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            onnx_path = folder / "model.onnx"
            extra_axes = {0: "batch"} if plan.dynamic_batch_size else None
            axes = onnx_conv.dynamic_axes_of(spec, bool(plan.dynamic_dims), extra_axes) \
                if (plan.dynamic_dims or plan.dynamic_batch_size) else None
            export = onnx_conv.export_onnx(module, spec, calibration[0], onnx_path, plan.opset, axes,
                                           exporter="torchscript")
            onnx_conv.check_model(onnx_path)
            model = onnx.load(str(onnx_path), load_external_data=False)
            report = precheck(model)
            details: dict[str, Any] = {"atc_onnx": {**export, "precheck": report.to_dict(),
                                                    "nodes": len(model.graph.node)}}
            if not report.passed:
                listed = "\n  ".join(u.describe() for u in report.unsupported)
                raise UnsupportedOperatorError(
                    f"the ATC-ready ONNX of {spec.name} (opset {report.opset}) has operator(s) ATC cannot parse "
                    f"(ATC would stop with E19010):\n  {listed}", report)
            details["atc_onnx"]["parity"] = self._onnx_parity(module, spec, calibration, onnx_path, plan)
            aipp_path = None
            if plan.aipp:
                aipp_path = folder / "aipp.cfg"
                aipp_path.write_text(aipp_config(spec.preprocessing()))
            atc_model = "model.onnx"
            if precision == "int8-static":
                atc_model = f"{AMCT_PREFIX}_deploy_model.onnx"
                inputs = set(spec.input_names)
                np.savez(folder / "calibration.npz", **{f"{i}/{n}": a for i, feed in enumerate(calibration)
                                                       for n, a in feed.items() if n in inputs})
                shutil.copyfile(Path(__file__).with_name("amct_calibrate.py"), folder / "amct_calibrate.py")
                details["amct"] = ({"ran": False, "calibration_samples": len(calibration),
                                    "command": f"python3 amct_calibrate.py model.onnx calibration.npz {AMCT_PREFIX}"}
                                   if atc_script else self._amct(module, spec, calibration, folder))
            if atc_script:
                options_rel = plan.atc_options(spec, atc_model, "model", "aipp.cfg" if aipp_path else None)
                self._write_script_folder(folder, spec, precision, plan, options_rel, details)
                details["atc"] = {"command": options_rel.shell(), "ran": False, "om_produced": False}
                return Conversion(path, module, details)
            atc_options = plan.atc_options(spec, str(folder / atc_model), str(folder / "model"),
                                           str(aipp_path) if aipp_path else None)
            start = time.perf_counter()
            log_path = folder / "atc.log"
            try:
                produced = run_atc(atc_options, log_path, atc=atc, timeout=atc_timeout)
            except AtcError as exc:
                # The work folder goes with the failed conversion; keep the log where the user can read it.
                fd, keep = tempfile.mkstemp(prefix=f"pocketformer-atc-{spec.name}-", suffix=".log")
                os.close(fd)
                shutil.copyfile(log_path, keep)
                raise AtcError(str(exc).replace(str(log_path), keep), exc.codes, Path(keep)) from None
            details["atc"] = {"command": atc_options.shell(), "ran": True, "om_produced": True,
                              "atc_s": round(time.perf_counter() - start, 1), "log_tail": log_path.read_text()[-2000:],
                              "warnings": translate_atc_log(log_path.read_text())}
            os.replace(produced, path)
        return Conversion(path, module, details)

    def _amct(self, module, spec, calibration, folder: Path) -> dict[str, Any]:
        """AMCT calibration here (amct_onnx importable); its fake-quant model must meet the int8 SQNR floor."""
        import amct_onnx as amct

        from converters import amct_calibrate
        from converters import onnx as onnx_conv
        from converters import parity

        start = time.perf_counter()
        feeds = [{n: f[n] for n in spec.input_names} for f in calibration]
        paths = amct_calibrate.calibrate(amct, folder / "model.onnx", feeds, folder / AMCT_PREFIX)
        agreement = onnx_conv.agreement(parity.torch_outputs(module, spec.input_names, feeds),
                                        amct_calibrate.fake_quant_outputs(amct, paths["fake_quant"], feeds))
        floor = spec.tolerance("int8-static").min_sqnr_db
        if not agreement["sqnr_db"] >= floor:
            raise ConversionError(f"AMCT's int8 simulation of {spec.name} is {agreement['sqnr_db']:.1f} dB from fp32 "
                                  f"PyTorch (floor {floor} dB): not compiled")
        return {"ran": True, "tool": "amct_onnx", "calibration_samples": len(feeds),
                "fake_quant_vs_fp32": agreement, "amct_s": round(time.perf_counter() - start, 1)}

    def _onnx_parity(self, module, spec, calibration, onnx_path: Path, plan: _Plan) -> dict[str, Any]:
        """The ATC-ready ONNX on ONNX Runtime vs PyTorch: the real samples, and each checked profile."""
        from converters import onnx as onnx_conv
        from converters import parity

        tolerance = spec.tolerance("fp32").atol
        results = {"tolerance": tolerance,
                   "samples": onnx_conv.agreement(parity.torch_outputs(module, spec.input_names, calibration),
                                                  onnx_conv.ort_outputs(onnx_path, calibration, "disabled"))}
        checks = []
        if plan.dynamic_dims:
            lens = sorted({p[0] for p in plan.dynamic_dims}) if plan.dims_are_seq_lens else []
            for length in _spread(lens, PARITY_PROFILES):
                feeds = [_with_seq_len(f, spec, length) for f in calibration[:2]]
                checks.append(("sequence", length, feeds))
        for batch in _spread(sorted(plan.dynamic_batch_size), PARITY_PROFILES):
            feed = {n: np.concatenate([calibration[i % len(calibration)][n] for i in range(batch)])
                    for n in spec.input_names}
            checks.append(("batch", batch, [feed]))
        profiles = []
        for kind, value, feeds in checks:
            ref = parity.torch_outputs(module, spec.input_names, feeds)
            got = onnx_conv.ort_outputs(onnx_path, feeds, "disabled")
            profiles.append({kind: value, **onnx_conv.agreement(ref, got)})
        if profiles:
            results["profiles"] = profiles
        worst = max([results["samples"]["max_abs_err"]] + [p["max_abs_err"] for p in profiles])
        results["max_abs_err"] = worst
        if not np.isfinite(worst) or worst > tolerance:
            raise ConversionError(f"the ATC-ready ONNX of {spec.name} differs from PyTorch on ONNX Runtime by "
                                  f"{worst:.3g} > {tolerance:g}: {results}")
        return results

    def _write_script_folder(self, folder: Path, spec, precision: str, plan: _Plan, options: AtcOptions,
                             details: dict[str, Any]) -> None:
        command = options.shell()
        calibrate = (f"# int8: AMCT calibration on the real samples first (writes {AMCT_PREFIX}_deploy_model.onnx)\n"
                     f"{details['amct']['command']}\n") if precision == "int8-static" else ""
        script = f"""#!/usr/bin/env bash
# Generated by Pocketformer for {spec.name} ({precision}, --precision_mode={plan.precision_mode}).
# Converts model.onnx into model.om with ATC. Run it on a host with Huawei's CANN toolkit.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v atc >/dev/null 2>&1; then
  if [ -n "${{ASCEND_TOOLKIT_HOME:-}}" ] && [ -f "$ASCEND_TOOLKIT_HOME/set_env.sh" ]; then
    # shellcheck disable=SC1091
    source "$ASCEND_TOOLKIT_HOME/set_env.sh"
  else
    echo "atc not found: install the CANN toolkit and 'source <ascend-toolkit>/set_env.sh' first" >&2
    exit 127
  fi
fi
{calibrate}{command} 2>&1 | tee atc.log
echo "wrote $(pwd)/model.om"
"""
        (folder / "atc.sh").write_text(script)
        (folder / "atc.sh").chmod(0o755)
        manifest = {"model": spec.name, "precision": precision, "inputs": [s.to_dict() for s in spec.input_specs()],
                    "outputs": list(spec.output_names), "preprocessing": spec.preprocessing(),
                    "atc_argv": options.argv(), "soc_version": plan.soc_version,
                    "precision_mode": plan.precision_mode, "aipp": plan.aipp, **details}
        (folder / "atc_job.json").write_text(json.dumps(manifest, indent=2, default=str))
        shapes = "; ".join(f"{k}: {list(v)}" for k, v in options.input_shape.items())
        parity = details["atc_onnx"]["parity"]
        aipp_note = ("\n`aipp.cfg` makes the .om take an RGB uint8 image (HWC, already resized and centre-cropped to "
                     f"{spec.preprocessing()['size']}) and normalise it on the AI Core.\n" if plan.aipp else "")
        aipp_row = "\n| `aipp.cfg` | AIPP image preprocessing (--insert_op_conf) |" if plan.aipp else ""
        amct_rows = ("\n| `amct_calibrate.py` | int8: AMCT calibration (needs amct_onnx from CANN); `atc.sh` runs it "
                     "first and ATC compiles its deploy model |\n| `calibration.npz` | the calibration feeds "
                     f"({details['amct']['calibration_samples']} real samples) |") if precision == "int8-static" else ""
        n_ops = len(details["atc_onnx"]["precheck"]["ops"])
        where = " and every checked profile" if "profiles" in parity else ""
        tradeoff = ("fp16 where the AI Core lacks an fp32 kernel: fast, ~1e-3 relative error"
                    if PRECISION_MODES[plan.precision_mode] == "fp16" else
                    "keeps fp32 everywhere: exact but slower, and fails to compile where the SoC has no fp32 kernel, "
                    "e.g. the Ascend310 cube units")
        int8_note = ("int8 cube operators from AMCT's calibration (run by `atc.sh` before ATC: it needs amct_onnx); for "
                     "the rest, " if precision == "int8-static" else "")
        readme = f"""# {spec.name} for Ascend ({plan.soc_version}), prepared by Pocketformer

This folder holds everything ATC needs to build `model.om`; no `.om` was built where it was written (`--atc-script`).

| file | what |
|---|---|
| `model.onnx` | the ATC-ready ONNX: opset {plan.opset}, TorchScript exporter, eager attention |
| `atc.sh` | the exact atc command; run `./atc.sh` on a CANN host, it writes `model.om` and `atc.log` |
| `atc_job.json` | inputs, outputs, preprocessing, the command as argv, the pre-check and parity figures |{aipp_row}{amct_rows}

Command:

    {command}

- Inputs: {shapes} (`-1` = chosen per run among the compiled profiles).
- Operator pre-check against ATC's ONNX operator table: passed ({n_ops} operator types).
- The ONNX matches PyTorch on ONNX Runtime: max abs error {parity['max_abs_err']:.2g} on the real samples{where}.
- Precision: {int8_note}`--precision_mode={plan.precision_mode}` ({tradeoff}).
{aipp_note}
Check the result on the NPU host: `pocketformer run model.om` (needs ais_bench or pyACL), or
`python -m ais_bench --model model.om`. On failure, `atc.log` carries ATC's error codes (E19010: an operator
without parser; E10001: a bad argument; EZ9999: an operator that does not compile for this SoC).
"""
        (folder / "README.md").write_text(readme)


def _spread(values: Sequence[int], n: int) -> list[int]:
    """At most `n` of `values`: the first, the last and evenly spaced ones between."""
    values = list(values)
    if len(values) <= n:
        return values
    idx = np.linspace(0, len(values) - 1, n).round().astype(int)
    return [values[i] for i in sorted(set(idx))]


def _with_seq_len(feed: dict[str, np.ndarray], spec, length: int) -> dict[str, np.ndarray]:
    """A token feed cut or padded (id 0 = [PAD], mask 0) to `length` along each input's dynamic axis."""
    out = {}
    for s in spec.input_specs():
        arr = feed[s.name]
        for axis in s.dynamic_axes:
            current = arr.shape[axis]
            if length <= current:
                arr = np.take(arr, np.arange(length), axis=axis)
            else:
                pad = [(0, 0)] * arr.ndim
                pad[axis] = (0, length - current)
                arr = np.pad(arr, pad, constant_values=0)
        out[s.name] = np.ascontiguousarray(arr)
    return out
