"""The WiC / WSC / ReCoRD heads exported next to a ``DebertaV2Model`` (``head.safetensors``), as torch modules a
transformers user applies to ``last_hidden_state``. Needs torch and safetensors only."""
import json
from pathlib import Path

import torch

from megatron_vega.convert.hf_tasks import HEAD_FILE
from megatron_vega.model.heads import MentionScoringHead, SpanPairHead


class SpanHead(torch.nn.Module):
    """``head(last_hidden_state [b, s, H], spans [m, 3])`` -> the framework's logits: WiC/WSC [b, 2] (rows 2i and
    2i+1 of ``spans`` are sequence i's two spans), ReCoRD [m, 2] (one (0, score) row per mention span)."""

    def __init__(self, task: str, head: torch.nn.Module):
        super().__init__()
        self.task, self.head = task, head

    def forward(self, last_hidden_state, spans):
        return self.head(last_hidden_state.transpose(0, 1), {"spans": spans})


def build_span_head(task: str, hidden: int) -> torch.nn.Module:
    return MentionScoringHead(hidden, 0.0) if task == "ReCoRD" else SpanPairHead(hidden, 2, 0.0)


def load_span_head(directory) -> SpanHead:
    from safetensors import safe_open
    from safetensors.torch import load_file
    path = Path(directory) / HEAD_FILE
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    head = build_span_head(meta["task"], json.loads(meta["hidden_size"]))
    head.load_state_dict(load_file(path))
    return SpanHead(meta["task"], head).eval()
