"""The packed entry point of a BERT-family model: several sentences in one row, computed as if each ran alone.

Krell et al. 2021 (arXiv 2107.02027), §3 "packing without cross-contamination": a block-diagonal attention mask
(a token attends only to tokens of its own sequence), position ids restarting at 0 in each sequence, and a
per-sequence readout. Here the mask is built inside the graph from `segment_ids` (1.. per sequence, 0 on
padding), so the row carries four (1, capacity) integer tensors (`device_runtime.packing.pack` makes them), and
the readout gathers with a one-hot (capacity x max_segments) matmul rather than an index gather, which every
exporter and XNNPACK take:
- "cls" (the sequence classifiers, TinyBERT and Q8BERT): each sequence's first token through BERT's pooler and
  classifier, as `BertForSequenceClassification` does with token 0;
- "mean" (sentence embeddings, all-MiniLM-L6-v2): the mean of each sequence's last hidden states.
The output is (1, max_segments, ...): one row per segment slot (empty slots hold the readout of nothing).
"""
from __future__ import annotations


def packed_module(module, bert, readout: str, max_segments: int):
    """`module` (a zoo BERT-family module holding the transformers `BertModel` `bert`) behind the packed entry
    point (see the module docstring)."""
    import torch

    class PackedBert(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.bert = bert
            self.register_buffer("slots", torch.arange(1, max_segments + 1), persistent=False)

        def forward(self, input_ids, token_type_ids, position_ids, segment_ids):
            same = segment_ids[:, :, None] == segment_ids[:, None, :]
            allowed = same & (segment_ids > 0)[:, None, :]
            # A large finite negative, not -inf: a padding query sees nothing allowed, and softmax of equal
            # finite values is uniform rather than NaN.
            mask = (~allowed)[:, None].to(torch.float32) * torch.finfo(torch.float32).min
            hidden = self.bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids,
                                          position_ids=position_ids)
            hidden = self.bert.encoder(hidden, attention_mask=mask)[0]
            member = (segment_ids[:, :, None] == self.slots).to(hidden.dtype)  # (1, capacity, slots)
            if readout == "cls":
                first = member * (position_ids == 0)[..., None].to(hidden.dtype)
                pooled = first.transpose(1, 2) @ hidden
                pooler = self.bert.pooler
                classifier = self.inner.model.classifier
                return classifier(pooler.activation(pooler.dense(pooled)))
            counts = member.sum(dim=1)[..., None].clamp(min=1.0)
            pooled = (member.transpose(1, 2) @ hidden) / counts
            projection = getattr(self.inner, "projection", None)
            return projection(pooled) if projection is not None else pooled

    wrapped = PackedBert(module).eval()
    wrapped.pocketformer_weights = getattr(module, "pocketformer_weights", {})
    return wrapped
