"""What a CPU is and which of the kernels' instruction sets it has, read from its /proc/cpuinfo text.

The same machine class is not the same CPU from one run to the next (an AMD EPYC with AVX-512 VNNI, an Intel
Xeon that adds AVX512-FP16 and AMX-INT8/BF16; DESIGN.md §6), and runtimes pick their kernels from these
features, so every measured figure carries a `CpuInfo` record: `pocketformer bench` here, in its isolated
workers' coordinator and on a device (the device's own /proc/cpuinfo), `pocketformer tune`, and the roofline of
`pocketformer analyze`. One parser for all of them: x86 blocks (`vendor_id`, `flags`, `siblings` / `cpu cores`)
and ARM blocks (`CPU implementer`, `CPU part`, `Features`; often no model name, so the cores are named from their
part numbers). An emulated board says so in its model name ("... (emulated: qemu-aarch64-static -cpu ...)",
scripts/arm64_board.sh): `emulated` carries that, and its timings are not device timings.

Standard library only: this runs on the device too.
"""
from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

CPUINFO = "/proc/cpuinfo"

# The features the kernels of the runtimes choose between, in the order they are shown: fp32 SIMD width and FMA,
# int8 dot products (VNNI / sdot / smmla), AMX tiles, fp16 and bf16 arithmetic, scalable vectors.
KERNEL_FEATURES = {
    "x86_64": ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
               "amx_int8", "amx_bf16", "amx_fp16"),
    "aarch64": ("asimd", "asimddp", "i8mm", "fphp", "asimdhp", "bf16", "sve", "sve2", "sme"),
}

# MIDR implementer and part numbers of common cores (Linux's arch/arm64/include/asm/cputype.h): ARM's
# /proc/cpuinfo has no model name, only these.
ARM_IMPLEMENTERS = {"0x41": "ARM", "0x42": "Broadcom", "0x46": "Fujitsu", "0x48": "HiSilicon", "0x4e": "NVIDIA",
                    "0x51": "Qualcomm", "0x53": "Samsung", "0x61": "Apple", "0xc0": "Ampere"}
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
             "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
             "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
             "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd48": "Cortex-X2",
             "0xd49": "Neoverse-N2", "0xd4d": "Cortex-A715", "0xd4e": "Cortex-X3", "0xd4f": "Neoverse-V2",
             "0xd80": "Cortex-A520", "0xd81": "Cortex-A720", "0xd82": "Cortex-X4"}

_EMULATED = re.compile(r"\(emulated(?::\s*([^)]*))?\)")


@dataclass(frozen=True)
class CpuInfo:
    """One machine's CPU as its /proc/cpuinfo describes it."""

    model: str                    # "model name" (x86, the arm64 board), else the ARM cores by part, else "unknown"
    vendor: str                   # "GenuineIntel", "AuthenticAMD", "ARM", "Qualcomm", ... or "unknown"
    arch: str                     # "x86_64", "aarch64" or "unknown" (from the text's shape)
    cpus: int                     # logical processors listed
    cores: int                    # physical cores: cpus / threads per core
    threads_per_core: int         # x86 "siblings" / "cpu cores" (2: the logical CPUs are SMT pairs); 1 elsewhere
    family: str | None            # x86 "cpu family"; ARM "CPU architecture"
    model_id: str | None          # x86 "model" (143 Sapphire Rapids, 207 Emerald Rapids); ARM "CPU part"
    mhz: float | None             # x86 "cpu MHz" as reported (a VM reports its nominal clock); ARM: none
    flags: frozenset[str]         # every flag (x86 "flags") or feature (ARM "Features") the kernel lists
    emulated: str | None          # the emulator, when the model name says "(emulated: ...)"
    hypervisor: bool | None       # x86 "hypervisor" flag: a virtual machine; None where cpuinfo cannot say
    source: str                   # where the text came from

    @property
    def features(self) -> tuple[str, ...]:
        """The kernel-relevant features present, in KERNEL_FEATURES order."""
        return tuple(f for f in KERNEL_FEATURES.get(self.arch, ()) if f in self.flags)

    def has(self, *names: str) -> bool:
        """True when every one of `names` is listed."""
        return all(n in self.flags for n in names)

    @property
    def amx_int8(self) -> bool:
        return self.has("amx_tile", "amx_int8")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the record every bench and tune document carries (`host.cpu_info`)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["flags"] = sorted(self.flags)
        out["features"] = list(self.features)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CpuInfo":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["flags"] = frozenset(values.get("flags") or data.get("features") or ())
        return cls(**{**{k: None for k in known}, **values})

    def summary(self) -> str:
        """One line: model, vendor and identity, topology, VM or emulator, and the kernel-relevant features."""
        ident = (f"{self.vendor} family {self.family} model {self.model_id}" if self.arch == "x86_64" else
                 f"{self.vendor} part {self.model_id}" if self.model_id else self.vendor)
        topology = (f"{self.cpus} CPUs = {self.cores} core(s) x {self.threads_per_core} threads"
                    if (self.threads_per_core or 1) > 1 else f"{self.cpus} CPU(s)")
        where = ", VM" if self.hypervisor else ""
        if self.emulated and "emulated" not in self.model:
            where += f", emulated ({self.emulated})"
        features = " ".join(self.features) or "none of the kernels' SIMD features listed"
        return f"{self.model} ({ident}), {topology}{where}: {features}"


def _field(block: str, name: str) -> str | None:
    match = re.search(rf"^{re.escape(name)}\s*:\s*(.*?)\s*$", block, re.MULTILINE)
    return match.group(1) if match and match.group(1) else None


def _count(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def parse_cpuinfo(text: str, source: str = "cpuinfo text") -> CpuInfo:
    """The CPU a /proc/cpuinfo text describes (this machine's, a device's, or a recorded one)."""
    blocks = [b for b in re.split(r"\n\s*\n", text or "") if re.search(r"^processor\s*:", b, re.MULTILINE)]
    first = blocks[0] if blocks else (text or "")
    flag_lists = [(_field(b, "flags") or _field(b, "Features") or "").split() for b in blocks or [first]]
    flag_lists = [f for f in flag_lists if f]
    # Features common to every core: a big.LITTLE phone lists them per core, and a kernel runs anywhere.
    flags = frozenset(set(flag_lists[0]).intersection(*flag_lists[1:])) if flag_lists else frozenset()
    x86 = _field(first, "vendor_id") is not None or _field(first, "flags") is not None
    arm = not x86 and (_field(first, "CPU implementer") is not None or _field(first, "Features") is not None)
    arch = "x86_64" if x86 else "aarch64" if arm else "unknown"
    # Counted by "processor" lines, not blocks: older ARM kernels list every processor in one block.
    cpus = len(re.findall(r"^processor\s*:", text or "", re.MULTILINE)) or (1 if text and text.strip() else 0)
    model = _field(first, "model name")
    if x86:
        vendor = _field(first, "vendor_id") or "unknown"
        family, model_id = _field(first, "cpu family"), _field(first, "model")
        # Logical CPUs per package over cores per package: 2 when the vCPUs are the two threads of one core.
        siblings, per_package = _count(_field(first, "siblings")), _count(_field(first, "cpu cores"))
        threads = siblings // per_package if siblings and per_package else 1
        mhz_text = _field(first, "cpu MHz")
        mhz = float(mhz_text) if mhz_text and re.fullmatch(r"[\d.]+", mhz_text) else None
    else:
        implementer = (_field(first, "CPU implementer") or "").lower()
        vendor = ARM_IMPLEMENTERS.get(implementer, f"implementer {implementer}" if implementer else "unknown")
        family, model_id = _field(first, "CPU architecture"), _field(first, "CPU part")
        threads, mhz = 1, None
        if not model:  # the cores by part ("Cortex-A55 x4 + Cortex-A78 x4"), and the SoC where it is named
            parts = [(_field(b, "CPU part") or "").lower() for b in blocks]
            counts = {p: parts.count(p) for p in dict.fromkeys(p for p in parts if p)}
            exact = sum(counts.values()) == cpus  # older kernels give one part line for all the processors
            model = " + ".join(ARM_PARTS.get(p, f"part {p}") + (f" x{n}" if exact else "") for p, n in counts.items())
            hardware = _field(text or "", "Hardware")
            model = f"{model} ({hardware})" if model and hardware else model or hardware
    emulated = _EMULATED.search(model or "")
    return CpuInfo(model=model or "unknown", vendor=vendor, arch=arch, cpus=cpus,
                   cores=max(1, cpus // max(1, threads)) if cpus else 0, threads_per_core=max(1, threads),
                   family=family, model_id=model_id, mhz=mhz, flags=flags,
                   emulated=(emulated.group(1) or "emulated").strip() if emulated else None,
                   hypervisor=("hypervisor" in flags) if x86 else None, source=source)


def read_cpuinfo(path: str | None = None) -> CpuInfo:
    """This machine's CPU (from `path`, default CPUINFO). Where that is missing or unreadable (macOS, a locked-down
    phone), what `platform` knows, said in `source`."""
    path = path or CPUINFO
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError as exc:
        text, failure = "", f"{path} unreadable ({type(exc).__name__})"
    else:
        failure = None
    info = parse_cpuinfo(text, source=path)
    if failure or info.cpus == 0:
        machine = platform.machine().lower()
        info = replace(info, model=platform.processor() or platform.machine() or "unknown",
                       arch="x86_64" if machine in ("x86_64", "amd64") else "aarch64" if machine in
                       ("aarch64", "arm64") else info.arch, cpus=os.cpu_count() or 1, cores=os.cpu_count() or 1,
                       source=failure or f"{path} lists no processor; platform module")
    return info


def host_fields(info: CpuInfo) -> dict[str, Any]:
    """The keys a bench document's `host` gets from a CPU: `cpu` (its model, as before) and the full record."""
    return {"cpu": info.model, "cpu_info": info.to_dict()}


def describe_host(host: Mapping[str, Any] | None) -> str:
    """One line for a document's `host`: the record's summary, or the model alone for documents written before
    the record existed."""
    record = (host or {}).get("cpu_info")
    if record:
        return CpuInfo.from_dict(record).summary()
    cpu = (host or {}).get("cpu")
    return f"{cpu} (CPU features not recorded)" if cpu else "CPU not recorded"
