"""litert-torch's PT2E quantizer restricted to chosen submodules: what makes a `.tflite` mixed-precision graph.

`PT2EQuantizer.set_module_name` cannot be used for this: its name filter strips a fixed `L__self___` prefix from
the exported graph's `nn_module_stack` keys, which torch 2.14 spells `L__self__stages.2` (two underscores), so
no node ever matches. This quantizer annotates the same static patterns (conv, linear, add, mul, pooling, ...)
with the global config, but only on nodes whose module stack (its qualified names, the values' first field)
passes through one of `members`. Everything else stays float; PT2E puts the QUANTIZE/DEQUANTIZE pair at each
boundary between the two.
"""
from __future__ import annotations

from typing import Sequence


def inside(node, members: Sequence[str]) -> bool:
    """Whether the graph node was traced inside one of the submodules `members` (qualified names)."""
    stack = node.meta.get("nn_module_stack") or {}
    names = [value[0] for value in stack.values() if isinstance(value, (tuple, list)) and value]
    return any(name == m or name.startswith(m + ".") for name in names for m in members)


def unit_quantizer(members: Sequence[str] | None):
    """A litert-torch PT2E quantizer (per-channel symmetric int8 weights, static activations, as int8-static)
    that annotates only nodes inside `members` (None: every node, litert-torch's own quantizer)."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.pt2e_quantizer_utils import OP_TO_ANNOTATOR, propagate_annotation

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    if members is None:
        return PT2EQuantizer().set_global(config)
    chosen = tuple(members)

    class UnitQuantizer(PT2EQuantizer):
        def annotate(self, model):
            # The global config is set (litert-torch reads it to pick its static mode), but applied here only
            # through the filter.
            for op in self.STATIC_OPS:
                OP_TO_ANNOTATOR[op](model, self.global_config, lambda n: inside(n, chosen))
            propagate_annotation(model)
            return model

    return UnitQuantizer().set_global(config)


def pt2e_reference(module, samples: list[tuple], members: Sequence[str] | None = None):
    """The PT2E-quantized PyTorch model alone (no conversion), calibrated on `samples`: what a unit's sensitivity
    is measured with when its cost is already known."""
    import torch
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    with torch.no_grad():
        prepared = prepare_pt2e(torch.export.export(module, samples[0]).module(), unit_quantizer(members))
        for sample in samples:
            prepared(*sample)
        return move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False))
