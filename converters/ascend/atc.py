"""The `atc` command for an ONNX model: ATC's option values, typed options refused before anything runs, the
run itself, and its error codes translated.

What is here mirrors ATC's own rules (CANN's GE error-code list and ONNX parser): the SoC names
`--soc_version` accepts, the `--precision_mode` values and the precision each computes in, the parser's
opset range, the profile limits of `--dynamic_dims` / `--dynamic_batch_size`, and which combinations ATC
refuses. `AtcOptions.validate()` raises `AtcOptionError` for those before atc is started; `run_atc` keeps
atc's log and raises `AtcError` with the codes found in it.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from converters.base import ConversionError, UnsupportedError

# The opset Pocketformer exports for ATC (inside every CANN release's parser range), and that range.
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
INPUT_FORMATS = ("NCHW", "ND", "NCDHW")  # ONNX models; NHWC is TensorFlow-only in ATC
LOG_LEVELS = ("debug", "info", "warning", "error", "null")
MIN_PROFILES, MAX_PROFILES = 2, 100  # ATC's limits on --dynamic_batch_size / --dynamic_dims profiles (E10035/6)

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


class AtcError(ConversionError):
    """atc ran and failed; `codes` holds the error codes found in its log, `log_path` the full log."""

    def __init__(self, message: str, codes: list[dict], log_path: Path | None) -> None:
        super().__init__(message)
        self.codes = codes
        self.log_path = log_path


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


# -- running atc ---------------------------------------------------------------------------------------
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


@dataclass
class AtcPlan:
    """Every option of one conversion, resolved and checked against the model (`AscendOmConverter.plan`)."""

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
