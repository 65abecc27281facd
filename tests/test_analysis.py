"""Model analysis: parameters, FLOPs (FlopCounterMode, eager attention), memory access cost from the exported
graph, arithmetic intensity, and the CPU roofline read from /proc/cpuinfo."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models_zoo import family_representatives
from sdk.measure.analysis import (analyze_model, count_flops, count_params, cpu_roofline, eager_attention,
                          memory_access_cost, roofline_bound)
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


@pytest.mark.parametrize("name", family_representatives())
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
    data = json.loads(out.read_text())
    assert data["models"][0]["model"] == "mobilevit_xxs-tiny" and data["roofline"]["cores"] >= 1
