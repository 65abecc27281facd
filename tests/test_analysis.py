"""Model analysis: parameters, FLOPs (FlopCounterMode, eager attention), memory access cost from the exported
graph, arithmetic intensity, and the CPU roofline read from /proc/cpuinfo; the CPU record (device_runtime.cpu)
of the machine kinds this project runs on: the AMD EPYC and Intel Xeon VMs and the emulated arm64 board."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models_zoo import family_representatives
from conftest import SUITE_MODELS
from device_runtime.cpu import CpuInfo, parse_cpuinfo
from sdk.measure.analysis import (analyze_model, count_flops, count_params, cpu_roofline, eager_attention,
                                  format_analysis, memory_access_cost, roofline_bound)
from sdk.cli.app import EXIT_OK, main

DATA = Path(__file__).parent / "data"


class _LinearThenView(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 32)

    def forward(self, x):
        return self.fc(x).view(2, 16)


def test_flops_and_memory_access_cost_are_exact_on_a_linear_layer():
    module, x = _LinearThenView().eval(), torch.randn(1, 16)
    assert count_flops(module, (x,))["flops"] == 2 * 16 * 32
    mac = memory_access_cost(module, (x,))
    assert mac["weights_read_bytes"] == (32 * 16 + 32) * 4
    assert mac["activations_read_bytes"] == 16 * 4 and mac["activations_written_bytes"] == 32 * 4
    assert mac["operator_nodes"] == 1  # the view moves no data
    assert count_params(module) == {"params": 32 * 16 + 32, "weights_bytes": (32 * 16 + 32) * 4}


def test_embedding_lookup_reads_rows_not_the_table():
    module, ids = torch.nn.Embedding(1000, 8).eval(), torch.tensor([[1, 2, 3]])
    mac = memory_access_cost(module, (ids,))
    assert mac["weights_read_bytes"] == 3 * 8 * 4


def test_fused_attention_is_counted_eagerly():
    from timm.models.vision_transformer import Attention

    attention, x = Attention(32, num_heads=2).eval(), torch.randn(1, 10, 32)
    fused = count_flops(attention, (x,))
    # The trap: FlopCounterMode does not see F.scaled_dot_product_attention. It is detected and reported...
    assert fused["fused_attention_calls"] == 1
    assert eager_attention(attention) == 1
    eager = count_flops(attention, (x,))
    # ...and with eager attention the two attention matmuls (QK^T and AV: 2 x heads x N x N x head_dim x 2) count.
    assert eager["fused_attention_calls"] == 0
    assert eager["flops"] - fused["flops"] == 2 * (2 * 10 * 10 * 16 * 2)


@pytest.mark.parametrize("name", family_representatives(prefer=SUITE_MODELS))
def test_zoo_models_analysis(name):
    row = analyze_model(name, tiny=True)
    assert row["params"] > 0 and row["flops"] > 0 and row["mac_bytes"] > row["weights_read_bytes"] > 0
    assert row["fused_attention_calls"] == 0, "every zoo model must be counted with eager attention"
    assert row["arithmetic_intensity"] == pytest.approx(row["flops"] / row["mac_bytes"])
    assert row["operator_nodes"] > 5 and row["flops_by_op"]


def test_roofline_from_cpuinfo_of_the_baseline_machine():
    # DESIGN.md: "fp32 roofline of this machine: about 166 GFLOP/s on 2 cores; int8 matmul reaches ~658 GOP/s".
    roof = cpu_roofline((DATA / "cpuinfo_amd_epyc_zen4_2cpu.txt").read_text())
    assert roof["isa"] == "AVX-512" and roof["cores"] == 2 and roof["usable_cpus"] == 2
    assert roof["fp32_flops_per_cycle_per_core"] == 32  # two 256-bit FMA pipes (Zen 4 splits AVX-512)
    assert roof["peak_fp32_gflops"] == pytest.approx(2 * 2.596142 * 32)
    assert roof["peak_int8_gops"] == pytest.approx(2 * 2.596142 * 128)
    assert any("Zen" in a for a in roof["assumptions"])
    one = cpu_roofline((DATA / "cpuinfo_amd_epyc_zen4_2cpu.txt").read_text(), threads=1)
    assert one["peak_fp32_gflops"] == pytest.approx(roof["peak_fp32_gflops"] / 2)


def _cpuinfo(name: str) -> str:
    return (DATA / f"cpuinfo_{name}.txt").read_text()


INTEL, AMD, BOARD = "intel_xeon_emerald_rapids_2cpu", "amd_epyc_zen4_2cpu", "arm64_board_cortex_a76_2cpu"


def test_cpu_record_of_each_machine_kind():
    intel = parse_cpuinfo(_cpuinfo(INTEL))
    assert (intel.model, intel.vendor, intel.arch, intel.family, intel.model_id) == (
        "INTEL(R) XEON(R) PLATINUM 8573C", "GenuineIntel", "x86_64", "6", "207")
    # Two vCPUs that are one core's two threads (siblings 2, cpu cores 1), in a VM.
    assert (intel.cpus, intel.cores, intel.threads_per_core) == (2, 1, 2)
    assert intel.hypervisor is True and intel.emulated is None and intel.amx_int8
    assert intel.features == ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
                              "amx_tile", "amx_int8", "amx_bf16")
    amd = parse_cpuinfo(_cpuinfo(AMD))
    assert (amd.vendor, amd.family, amd.model_id, amd.cpus, amd.cores, amd.threads_per_core) == (
        "AuthenticAMD", "25", "17", 2, 2, 1)
    assert amd.features == ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16") and not amd.amx_int8
    assert amd.mhz == pytest.approx(2596.142) and amd.hypervisor is True
    board = parse_cpuinfo(_cpuinfo(BOARD))
    assert (board.vendor, board.arch, board.model_id, board.cpus, board.cores) == ("ARM", "aarch64", "0xd0b", 2, 2)
    assert board.features == ("asimd", "asimddp", "fphp", "asimdhp") and board.mhz is None
    assert board.emulated == "qemu-aarch64-static -cpu cortex-a76" and board.hypervisor is None  # cpuinfo cannot say
    for info in (intel, amd, board):  # the record survives a JSON document
        assert CpuInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    assert "amx_int8" in intel.summary() and "1 core(s) x 2 threads" in intel.summary()
    assert "amx" not in amd.summary() and "emulated" in board.summary()


def test_a_phone_cpuinfo_names_its_cores_and_keeps_the_features_all_of_them_have():
    # Android's /proc/cpuinfo: no model name; big.LITTLE cores listed by MIDR part, features per core.
    block = ("processor\t: {n}\nBogoMIPS\t: 38.40\nFeatures\t: fp asimd aes crc32 atomics fphp asimdhp asimddp{extra}\n"
             "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: {part}\n"
             "CPU revision\t: 0\n")
    text = "\n".join(block.format(n=n, part=part, extra=extra) for n, (part, extra) in enumerate(
        [("0xd05", ""), ("0xd05", ""), ("0xd41", " i8mm")]))
    phone = parse_cpuinfo(text)
    assert phone.model == "Cortex-A55 x2 + Cortex-A78 x1" and phone.cpus == 3 and phone.vendor == "ARM"
    assert "asimddp" in phone.features and "i8mm" not in phone.features and phone.emulated is None


def test_roofline_names_amx_and_the_peak_it_uses():
    roof = cpu_roofline(_cpuinfo(INTEL))
    ghz = 2.299999
    # One core's FMA units, whatever the number of its threads (the peak counts cores).
    assert roof["cores"] == 1 and roof["usable_cpus"] == 2 and cpu_roofline(_cpuinfo(INTEL), threads=2)["cores"] == 1
    assert roof["peak_fp32_gflops"] == pytest.approx(ghz * 64)  # 2 x 512-bit FMA units
    assert roof["int8_engine"] == "AMX-INT8" and roof["peak_int8_gops"] == pytest.approx(ghz * 2048)
    assert roof["peak_int8_vnni_gops"] == pytest.approx(ghz * 256)  # what kernels without AMX can reach
    assert roof["cpu_info"]["model_id"] == "207"
    text = format_analysis([], roof)
    assert "amx_int8" in text and "int8 peak (AMX-INT8): AMX-INT8 present" in text and "no fp32 path" in text
    amd = format_analysis([], cpu_roofline(_cpuinfo(AMD)))
    assert "AMX-INT8" not in amd and "amx" not in amd and "int8 peak (AVX-512 VNNI): no AMX" in amd
    board = cpu_roofline(_cpuinfo(BOARD))
    assert board["int8_engine"] == "NEON dot product" and board["peak_int8_gops"] is None  # no clock in cpuinfo
    assert "emulated" in format_analysis([], board) and "no peak fp32" in format_analysis([], board)


def test_roofline_bound():
    roof = {"peak_fp32_gflops": 100.0, "peak_int8_gops": 400.0, "bandwidth_gbs": 10.0}
    compute = roofline_bound(2e9, 1e6, roof)
    assert compute["compute_bound_ms"] == pytest.approx(20.0) and compute["bound_by"] == "compute"
    memory = roofline_bound(1e6, 1e9, roof)
    assert memory["memory_bound_ms"] == pytest.approx(100.0) and memory["roofline_ms"] == pytest.approx(100.0)
    assert memory["bound_by"] == "memory"
    assert roofline_bound(4e9, 0, roof, precision="int8")["compute_bound_ms"] == pytest.approx(10.0)


def test_cli_analyze(tmp_path, capsys):
    out = tmp_path / "analysis.json"
    assert main(["analyze", "mobilevit_xxs", "--tiny", "--json", str(out)]) == EXIT_OK
    printed = capsys.readouterr().out
    assert "mobilevit_xxs-tiny" in printed and "GFLOP" in printed and "peak fp32" in printed
    assert "  machine: " in printed and "  int8 peak (" in printed  # what this CPU has, and the peak it uses
    data = json.loads(out.read_text())
    assert data["models"][0]["model"] == "mobilevit_xxs-tiny" and data["roofline"]["cores"] >= 1
    assert data["roofline"]["cpu_info"]["flags"] and data["roofline"]["peak_basis"]["int8"]
