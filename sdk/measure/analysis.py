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
  vector ISA), with the per-microarchitecture width of the FMA units stated as an assumption. `measure=True`
  also times a large fp32 matmul and a memory copy on this machine.
"""
from __future__ import annotations

import os
import re
import time
from typing import Any, Sequence

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
def _cpu_field(text: str, name: str) -> str | None:
    m = re.search(rf"^{name}\s*:\s*(.+)$", text, re.MULTILINE)
    return m.group(1).strip() if m else None


def cpu_roofline(cpuinfo: str | None = None, threads: int | None = None, measure: bool = False) -> dict[str, Any]:
    """Peak fp32 FLOP/s and int8 op/s of `threads` cores (default: the usable ones) from /proc/cpuinfo.

    FLOPs per cycle per core = (FMA datapath bits / 32) x 2 (multiply + add) x FMA units. The ISA flags give the
    vector width; the datapath and the number of FMA units are per microarchitecture (AMD Zen 4 runs AVX-512 on
    two 256-bit pipes), so they are stated in `assumptions`. `measure=True` adds a timed fp32 matmul and copy.
    """
    this_machine = cpuinfo is None
    if this_machine:
        try:
            with open("/proc/cpuinfo") as fh:
                cpuinfo = fh.read()
        except OSError:
            cpuinfo = ""
    flags = set((_cpu_field(cpuinfo, "flags") or _cpu_field(cpuinfo, "Features") or "").split())
    vendor = _cpu_field(cpuinfo, "vendor_id") or _cpu_field(cpuinfo, "CPU implementer") or "unknown"
    family = _cpu_field(cpuinfo, "cpu family")
    model_name = _cpu_field(cpuinfo, "model name") or _cpu_field(cpuinfo, "Hardware") or "unknown"
    mhz = _cpu_field(cpuinfo, "cpu MHz")
    ghz = float(mhz) / 1e3 if mhz else None
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
        usable = len(re.findall(r"^processor\s*:", cpuinfo, re.MULTILINE)) or 1
    cores = int(threads or usable)
    assumptions = []
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
        assumptions.append("Arm NEON: 2 x 128-bit FMA pipes (Cortex-A7x class; X-series cores have 4)")
    else:
        assumptions.append(f"{isa}: {datapath}-bit datapath, {units} FMA units")
    flops_per_cycle = (datapath // 32) * (2 if fma else 1) * units
    vnni = bool({"avx512_vnni", "avx_vnni", "asimddp"} & flags)
    int8_per_cycle = (datapath // 32) * 8 * units if vnni else (datapath // 32) * 4 * units
    assumptions.append("int8: 4 multiply-accumulates per 32-bit lane and instruction (VNNI vpdpbusd / Arm sdot)"
                       if vnni else "int8: no dot-product instruction; 2 MACs per 32-bit lane")
    out: dict[str, Any] = {
        "cpu": model_name, "vendor": vendor, "family": family, "isa": isa, "flags_used": sorted(
            flags & {"avx512f", "avx2", "avx", "fma", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "asimd",
                     "asimddp", "sve", "sse2"}),
        "cores": cores, "usable_cpus": usable, "ghz": ghz, "clock_source": clock_source,
        "fp32_flops_per_cycle_per_core": flops_per_cycle, "int8_ops_per_cycle_per_core": int8_per_cycle,
        "peak_fp32_gflops": cores * ghz * flops_per_cycle if ghz else None,
        "peak_int8_gops": cores * ghz * int8_per_cycle if ghz else None,
        "assumptions": assumptions, "bandwidth_gbs": None,
    }
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
    lines = [f"CPU: {roofline['cpu']} ({roofline['isa']}), {roofline['cores']} core(s) at "
             f"{roofline['ghz'] or 0:.2f} GHz: peak fp32 {peak or 0:.0f} GFLOP/s, int8 "
             f"{roofline.get('peak_int8_gops') or 0:.0f} GOP/s"
             + (f"; measured matmul {roofline['measured_fp32_matmul_gflops']:.0f} GFLOP/s, copy "
                f"{roofline['bandwidth_gbs']:.1f} GB/s" if roofline.get("measured_fp32_matmul_gflops") else "")]
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
