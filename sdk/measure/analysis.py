"""Model analysis: parameters, FLOPs, memory access cost, arithmetic intensity, and this CPU's roofline.

- FLOPs come from torch's `FlopCounterMode` on one forward pass of the sample input, with attention computed
  eagerly: `FlopCounterMode` does not see fused attention kernels (`F.scaled_dot_product_attention` on CPU), so
  timm's `fused_attn` switches are turned off on the built module (the BERT family is built with eager
  attention already), and any fused call that still happens is counted and reported, never silently dropped.
- Memory access cost (MAC) comes from the exported graph (`torch.export`, the graph every converter starts
  from): for each operator node, the bytes of the tensors it reads (weights and activations) and writes.
  View-like operators (view, reshape, permute, expand, slice, ...) move no data and count zero. This is the
  unfused cost: a backend that fuses operators reads and writes less.
- Arithmetic intensity is FLOPs per byte of MAC. The CPU roofline bounds a run at max(FLOPs / peak compute,
  MAC / memory bandwidth); peak compute is read from /proc/cpuinfo (cores x clock x FLOPs per cycle from the
  vector ISA), with the per-microarchitecture width of the FMA units stated as an assumption; the int8 peak is
  the fastest int8 engine the CPU lists (AMX tiles, else VNNI or the Arm dot product), and `peak_basis` says
  which peak is used and why. The CPU is read by `device_runtime.cpu` (the record bench and tune documents
  carry too). `measure=True` also times a large fp32 matmul and a memory copy on this machine.
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any, Sequence

from device_runtime.cpu import CpuInfo, describe_host, parse_cpuinfo, read_cpuinfo
from models_zoo.precision import resolve

# Operators that only reinterpret a tensor (or return a part of it): no bytes move.
VIEW_OPS = {"view", "_unsafe_view", "reshape", "expand", "expand_as", "squeeze", "unsqueeze", "permute", "transpose",
            "t", "slice", "select", "alias", "detach", "split", "split_with_sizes", "chunk", "unbind", "as_strided",
            "flatten", "unflatten", "lift_fresh_copy", "getitem", "view_as", "narrow", "movedim", "dropout",
            "_assert_tensor_metadata", "sym_size", "sym_numel"}


GATHER_OPS = {"embedding", "index_select", "gather", "index", "embedding_bag"}


# -- FLOPs and parameters ------------------------------------------------------------------------------
def eager_attention(module) -> int:
    """Turn off timm's fused attention on every submodule; returns how many were switched."""
    switched = 0
    for sub in module.modules():
        if getattr(sub, "fused_attn", False) is True:
            sub.fused_attn = False
            switched += 1
    return switched


def count_flops(module, args: Sequence) -> dict[str, Any]:
    """FLOPs of one forward pass (FlopCounterMode: 2 per multiply-accumulate), total and per aten op."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode
    from torch.utils.flop_counter import FlopCounterMode

    class FusedAttentionCalls(TorchFunctionMode):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is F.scaled_dot_product_attention:
                FusedAttentionCalls.calls += 1
            return func(*args, **(kwargs or {}))

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), FusedAttentionCalls(), counter:
        module(*args)
    by_op: dict[str, int] = {}
    for ops in counter.get_flop_counts().values():
        for op, flops in ops.items():
            name = str(op).split(".")[-1] if "." in str(op) else str(op)
            by_op[name] = max(by_op.get(name, 0), int(flops))  # the "Global" entry holds the totals
    return {"flops": int(counter.get_total_flops()), "flops_by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
            "fused_attention_calls": FusedAttentionCalls.calls}


def count_params(module) -> dict[str, int]:
    params = sum(p.numel() for p in module.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in module.parameters())
    nbytes += sum(b.numel() * b.element_size() for b in module.buffers())
    return {"params": int(params), "weights_bytes": int(nbytes)}


# -- memory access cost --------------------------------------------------------------------------------
def _nbytes(value) -> int:
    import torch

    if isinstance(value, torch.Tensor):
        return int(value.numel() * value.element_size())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


def memory_access_cost(module, args: Sequence, exported=None) -> dict[str, Any]:
    """Bytes read and written per inference by the operators of the exported graph (views count zero)."""
    import torch

    ep = exported if exported is not None else torch.export.export(module, tuple(args))
    sig = ep.graph_signature
    weight_inputs = set(sig.inputs_to_parameters) | set(sig.inputs_to_buffers) | \
        set(getattr(sig, "inputs_to_lifted_tensor_constants", {}) or {})
    weights_read = activations_read = written = 0
    nodes = 0
    by_op: dict[str, int] = {}
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        if name in VIEW_OPS:
            continue
        nodes += 1
        read_w = sum(_nbytes(a.meta.get("val")) for a in node.all_input_nodes if a.name in weight_inputs)
        read_a = sum(_nbytes(a.meta.get("val")) for a in node.all_input_nodes if a.name not in weight_inputs)
        out = _nbytes(node.meta.get("val"))
        if name in GATHER_OPS:  # a lookup reads the rows it gathers, not the whole table
            read_w = min(read_w, out)
        weights_read += read_w
        activations_read += read_a
        written += out
        by_op[name] = by_op.get(name, 0) + read_w + read_a + out
    total = weights_read + activations_read + written
    return {"mac_bytes": int(total), "weights_read_bytes": int(weights_read),
            "activations_read_bytes": int(activations_read), "activations_written_bytes": int(written),
            "operator_nodes": nodes, "mac_by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1])[:12]),
            "graph": "torch.export graph (aten ops, unfused)"}


# -- the CPU's roofline --------------------------------------------------------------------------------
# AMX's tile unit (TMUL) multiplies 16x64 int8 by 64x16 int8 tiles: 1024 int8 multiply-accumulates per cycle per
# core on Sapphire/Emerald Rapids (Intel's figure, 8x a core's two 512-bit VNNI units). Only kernels written for
# the tiles reach it (oneDNN, ONNX Runtime's MLAS, XNNPACK's AMX GEMMs), after the kernel grants the process
# the tile state; the VNNI peak is given beside it for the others.
AMX_INT8_MACS_PER_CYCLE = 1024


def _int8_peak(info: CpuInfo, datapath: int, units: int) -> tuple[str, int, str]:
    """(engine, int8 ops per cycle per core, why): the fastest int8 path this CPU lists."""
    lanes = datapath // 32
    dot = lanes * 4 * 2 * units  # 4 int8 MACs per 32-bit lane and instruction, 2 ops per MAC
    if info.amx_int8:
        return ("AMX-INT8", AMX_INT8_MACS_PER_CYCLE * 2,
                f"AMX-INT8 present (amx_tile, amx_int8): int8 peak from the AMX tile unit, "
                f"{AMX_INT8_MACS_PER_CYCLE} int8 MACs per cycle per core; only AMX kernels reach it (oneDNN, "
                f"ONNX Runtime's MLAS, XNNPACK's AMX GEMMs); others stop at the VNNI peak, {dot} ops/cycle/core")
    per_lane = f"4 int8 MACs per 32-bit lane and instruction, {dot} ops/cycle/core"
    if info.has("avx512f", "avx512_vnni"):
        return "AVX-512 VNNI", dot, f"no AMX: int8 peak from AVX-512 VNNI (vpdpbusd), {per_lane}"
    if info.has("avx_vnni") or info.has("avx512_vnni"):
        return "AVX-VNNI", dot, f"no AMX: int8 peak from AVX-VNNI (256-bit vpdpbusd), {per_lane}"
    if info.has("i8mm"):
        return ("NEON i8mm", dot * 2, f"int8 peak from i8mm (smmla): 8 int8 MACs per 32-bit lane and instruction, "
                                      f"twice sdot's, {dot * 2} ops/cycle/core")
    if info.has("asimddp"):
        return "NEON dot product", dot, f"int8 peak from the dot product (asimddp, sdot): {per_lane}"
    return ("no int8 dot product", dot // 2, f"no int8 dot-product instruction (no AMX, VNNI or sdot): 2 MACs per "
                                             f"32-bit lane, {dot // 2} ops/cycle/core")


def cpu_roofline(cpuinfo: str | None = None, threads: int | None = None, measure: bool = False) -> dict[str, Any]:
    """Peak fp32 FLOP/s and int8 op/s of `threads` cores (default: the usable ones) from /proc/cpuinfo.

    FLOPs per cycle per core = (FMA datapath bits / 32) x 2 (multiply + add) x FMA units. The ISA flags give the
    vector width; the datapath and the number of FMA units are per microarchitecture (AMD Zen 4 runs AVX-512 on
    two 256-bit pipes), so they are stated in `assumptions`. The int8 peak is the fastest int8 engine listed
    (AMX tiles, else VNNI / sdot), and `peak_basis` says which peak each precision uses and why. Logical CPUs
    that are SMT threads of one core share its units: the peak counts cores. `cpu_info` is the CPU's record
    (`device_runtime.cpu`). `measure=True` adds a timed fp32 matmul and copy.
    """
    this_machine = cpuinfo is None
    info = read_cpuinfo() if this_machine else parse_cpuinfo(cpuinfo)
    flags, vendor, family = info.flags, info.vendor, info.family
    ghz = info.mhz / 1e3 if info.mhz else None
    clock_source = "cpuinfo 'cpu MHz' (as reported; VMs show the nominal clock)"
    if this_machine:
        try:
            with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as fh:
                ghz = int(fh.read()) / 1e6
                clock_source = "cpufreq cpuinfo_max_freq"
        except (OSError, ValueError):
            pass
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    else:
        usable = info.cpus or 1
    smt = info.threads_per_core
    cores = min(int(threads or usable), max(1, usable // smt))
    assumptions = []
    if smt > 1:
        assumptions.append(f"the {info.cpus} logical CPUs are {info.cores} core(s) x {smt} SMT threads (cpuinfo "
                           f"siblings / cpu cores): threads of one core share its FMA units, so the peak counts "
                           f"{cores} core(s)")
    if "avx512f" in flags:
        isa, isa_bits = "AVX-512", 512
    elif "avx2" in flags or "avx" in flags:
        isa, isa_bits = "AVX2" if "avx2" in flags else "AVX", 256
    elif "asimd" in flags or "neon" in flags:
        isa, isa_bits = "NEON", 128
    elif "sse2" in flags:
        isa, isa_bits = "SSE2", 128
    else:
        isa, isa_bits = "scalar", 32
    fma = "fma" in flags or isa == "NEON" or "avx512f" in flags
    datapath, units = isa_bits, 2
    if vendor == "AuthenticAMD" and family in ("23", "25") and isa_bits > 256:
        datapath = 256
        assumptions.append("AMD Zen 2/3/4 (family 23/25): 256-bit FMA datapath (Zen 4 runs AVX-512 as 2x256), "
                           "2 FMA pipes")
    elif vendor == "AuthenticAMD":
        assumptions.append(f"AMD family {family}: {datapath}-bit datapath, 2 FMA pipes")
    elif vendor == "GenuineIntel" and isa_bits == 512:
        assumptions.append("Intel AVX-512: 2 FMA units of 512 bits (Xeon Gold/Platinum; 1 on some parts)")
    elif isa == "NEON":
        assumptions.append("Arm NEON: 2 x 128-bit FMA pipes (Cortex-A7x class; X-series cores have 4)"
                           + ("; SVE counted at 128 bits (cpuinfo does not give the vector length)"
                              if "sve" in flags else ""))
    else:
        assumptions.append(f"{isa}: {datapath}-bit datapath, {units} FMA units")
    flops_per_cycle = (datapath // 32) * (2 if fma else 1) * units
    engine, int8_per_cycle, int8_why = _int8_peak(info, datapath, units)
    vnni_per_cycle = _int8_peak(replace(info, flags=flags - {"amx_int8"}), datapath, units)[1]
    fp32_why = (f"{isa} FMA: {datapath}-bit datapath x {units} units x 2 = {flops_per_cycle} "
                f"FLOP/cycle/core" + ("; AMX has no fp32 path" if "amx_tile" in flags else ""))
    half = [f for f in ("avx512_fp16", "amx_bf16", "avx512_bf16", "fphp", "asimdhp", "bf16") if f in flags]
    if half:  # a kernel computing in fp16/bf16 may run faster than this; the roofline does not assume one does
        fp32_why += f"; fp16/bf16 arithmetic listed ({' '.join(half)}), fp16 artifacts still bounded with this peak"

    def peak(per_cycle: int) -> float | None:
        return cores * ghz * per_cycle if ghz else None

    out: dict[str, Any] = {
        "cpu": info.model, "vendor": vendor, "family": family, "isa": isa, "flags_used": sorted(
            flags & {"avx512f", "avx2", "avx", "fma", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
                     "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "sve", "sse2"}),
        "cores": cores, "usable_cpus": usable, "ghz": ghz, "clock_source": clock_source,
        "fp32_flops_per_cycle_per_core": flops_per_cycle, "int8_ops_per_cycle_per_core": int8_per_cycle,
        "peak_fp32_gflops": peak(flops_per_cycle), "peak_int8_gops": peak(int8_per_cycle), "int8_engine": engine,
        "peak_basis": {"fp32": fp32_why, "int8": int8_why}, "assumptions": assumptions, "bandwidth_gbs": None,
        "cpu_info": info.to_dict(),
    }
    if engine == "AMX-INT8":
        out["peak_int8_vnni_gops"] = peak(vnni_per_cycle)
    if measure:
        out.update(measure_cpu(cores))
    return out


def measure_cpu(threads: int, seconds: float = 0.6) -> dict[str, Any]:
    """A timed 1024^3 fp32 matmul (GFLOP/s) and a 256 MiB copy (GB/s, read + write) with `threads` threads."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
        torch.mm(a, b)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            torch.mm(a, b)
            n += 1
        gflops = 2 * 1024 ** 3 * n / (time.perf_counter() - start) / 1e9
        src = torch.empty(64 * 2**20, dtype=torch.float32).fill_(1.0)
        dst = torch.empty_like(src)
        dst.copy_(src)
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            dst.copy_(src)
            best = min(best, time.perf_counter() - start)
        bandwidth = 2 * src.numel() * 4 / best / 1e9
    finally:
        torch.set_num_threads(previous)
    return {"measured_fp32_matmul_gflops": gflops, "bandwidth_gbs": bandwidth,
            "bandwidth_source": "best of 5 copies of 256 MiB (read + write)"}


# -- per model -----------------------------------------------------------------------------------------
def analyze_model(name, tiny: bool = False, seq_len: int | None = None, roofline: dict | None = None,
                  weights: str | None = None) -> dict[str, Any]:
    """Params, FLOPs, MAC, arithmetic intensity and roofline bound of a zoo model (or a ModelSpec)."""
    import torch

    from models_zoo import ModelSpec, get_model

    spec = name if isinstance(name, ModelSpec) else get_model(name, tiny=tiny)
    if tiny and not spec.is_tiny:
        spec = spec.tiny()
    if seq_len is not None and hasattr(spec, "with_seq_len"):
        spec = spec.with_seq_len(seq_len)
    module = spec.build(weights=weights)
    switched = eager_attention(module)
    feed = spec.sample_inputs()[0]
    args = tuple(torch.from_numpy(feed[n]) for n in spec.input_names)
    flops = count_flops(module, args)
    mac = memory_access_cost(module, args)
    row: dict[str, Any] = {"model": spec.name, "family": spec.family,
                           "inputs": {k: list(v.shape) for k, v in feed.items()}, **count_params(module), **flops,
                           **mac, "eager_attention_switched": switched}
    row["gflops"] = row["flops"] / 1e9
    row["arithmetic_intensity"] = row["flops"] / row["mac_bytes"] if row["mac_bytes"] else None
    if roofline:
        row.update(roofline_bound(row["flops"], row["mac_bytes"], roofline))
    return row


def roofline_bound(flops: float, mac_bytes: float, roofline: dict[str, Any], precision: str = "fp32") -> dict[str, Any]:
    """The lowest latency this CPU allows for `flops` and `mac_bytes`: compute and memory bounds, in ms.

    The compute bound is a hard floor. The memory bound divides the unfused graph's traffic by DRAM bandwidth:
    fused kernels move less and caches serve much of it, so read it as an indication, not a floor.
    """
    peak = roofline.get("peak_int8_gops" if resolve(precision).computes_int8 else "peak_fp32_gflops")
    out: dict[str, Any] = {}
    if peak:
        out["compute_bound_ms"] = flops / (peak * 1e9) * 1e3
    bandwidth = roofline.get("bandwidth_gbs")
    if bandwidth:
        out["memory_bound_ms"] = mac_bytes / (bandwidth * 1e9) * 1e3
    bounds = [v for v in out.values() if v is not None]
    if bounds:
        out["roofline_ms"] = max(bounds)
        out["bound_by"] = "memory" if out.get("memory_bound_ms", 0) > out.get("compute_bound_ms", 0) else "compute"
    return out


def format_analysis(rows: list[dict[str, Any]], roofline: dict[str, Any]) -> str:
    peak = roofline.get("peak_fp32_gflops")
    clock = (f"at {roofline['ghz']:.2f} GHz: peak fp32 {peak or 0:.0f} GFLOP/s, int8 "
             f"{roofline.get('peak_int8_gops') or 0:.0f} GOP/s" if roofline.get("ghz") else
             "(no clock in its cpuinfo: no peak fp32 or int8 figure)")
    lines = [f"CPU: {roofline['cpu']} ({roofline['isa']}), {roofline['cores']} core(s) {clock}"
             + (f"; measured matmul {roofline['measured_fp32_matmul_gflops']:.0f} GFLOP/s, copy "
                f"{roofline['bandwidth_gbs']:.1f} GB/s" if roofline.get("measured_fp32_matmul_gflops") else "")]
    if roofline.get("cpu_info"):  # what the CPU has (AMX included), and which peak each precision uses and why
        lines.append(f"  machine: {CpuInfo.from_dict(roofline['cpu_info']).summary()}")
    basis = roofline.get("peak_basis") or {}
    if basis:
        vnni = roofline.get("peak_int8_vnni_gops")
        lines += [f"  fp32 peak: {basis['fp32']}",
                  f"  int8 peak ({roofline.get('int8_engine')}): {basis['int8']}"
                  + (f" ({vnni:.0f} GOP/s here)" if vnni else "")]
    lines += [f"  assumption: {a}" for a in roofline.get("assumptions", [])]
    header = (f"  {'model':<28}{'params M':>10}{'GFLOP':>9}{'MAC MB':>9}{'FLOP/B':>8}{'compute ms':>12}"
              f"{'roofline ms':>13}  bound")
    lines += [header, "  " + "-" * (len(header) - 2)]
    for r in rows:
        lines.append(f"  {r['model']:<28}{r['params'] / 1e6:>10.3f}{r['gflops']:>9.3f}{r['mac_bytes'] / 1e6:>9.2f}"
                     f"{(r['arithmetic_intensity'] or 0):>8.1f}{r.get('compute_bound_ms', float('nan')):>12.3f}"
                     f"{r.get('roofline_ms', float('nan')):>13.3f}  {r.get('bound_by', '-')}")
        if r.get("fused_attention_calls"):
            lines.append(f"    ! {r['fused_attention_calls']} fused attention call(s) not counted in FLOPs")
    return "\n".join(lines)


def measured_on(rows: list[dict[str, Any]]) -> str:
    """The machine line under a latency table: each device's CPU (model, VM or emulator, kernel features) from
    the `host` of the bench documents its rows came from; figures from different CPUs do not compare."""
    machines: dict[str, set[str]] = {}
    for r in rows:
        machines.setdefault(str(r.get("device", "local")), set()).add(describe_host(r.get("host")))
    return "Measured on: " + "; ".join(f"{device}: {' | '.join(sorted(cpus))}"
                                       for device, cpus in sorted(machines.items())) if machines else ""
