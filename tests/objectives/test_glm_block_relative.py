"""--glm-block-positions relative (docs/glm_and_cloze.md): on the specification's toy example, two tokens of one
Part-B span are at their position-2 distance, every other pair keeps its position-1 distance; a tiny model reads
the in-span order through it (outputs differ from position 1 alone) and still leaks nothing backwards."""
import numpy as np
import torch

from megatron_vega.config import ParallelConfig
from megatron_vega.data.glm_blanks import GLMSpecialIds, glm_layout
from megatron_vega.model.attention_inputs import AttentionInputs
from megatron_vega.model.build import build_model, transformer_config
from megatron_vega.model.relative_position import index_of_relative
from megatron_vega.model.weights import init_weights
from tests.model.helpers import tiny_config

IDS = GLMSpecialIds(mask=4, sop=996, eop=997, smask=998, gmask=999, pad=0)
X = [11, 12, 13, 14, 15, 16]  # x1 … x6


def _toy():
    sample = glm_layout(np.array(X), [(2, 3), (4, 6)], [IDS.mask] * 2, [1, 0], IDS)  # Part B: (x5 x6), (x3)
    return {k: torch.from_numpy(np.asarray(v))[None].long() for k, v in sample.items()}


def _attention(batch):
    return AttentionInputs(batch["padding_mask"], prefix_lengths=batch["prefix_lengths"],
                           position_ids=batch["position_ids"], block_position_ids=batch["block_position_ids"])


def test_toy_example_distances():
    batch = _toy()
    buckets, max_position, span = 256, 512, 256  # wide enough that distances up to 9 are their own rows
    index = _attention(batch).relative_index(buckets, max_position, span, block_relative=True)[0]
    plain = _attention(batch).relative_index(buckets, max_position, span)[0]

    def row(delta):
        return int(index_of_relative(torch.tensor(delta), buckets, max_position, span))
    # positions 5 6 7 = [sop] x5 x6 of span (x5 x6) at blank 4; 8 9 = [sop] x3 at blank 2
    assert [int(index[7, j]) for j in (5, 6, 7)] == [row(2), row(1), row(0)]
    assert int(index[9, 8]) == row(1) and int(index[8, 9]) == row(-1)
    assert int(index[6, 4]) == row(0) and int(index[9, 6]) == row(2 - 4)  # blank, other span: position 1
    same_span = torch.zeros(10, 10, dtype=torch.bool)
    same_span[5:8, 5:8] = same_span[8:10, 8:10] = True
    assert torch.equal(index[~same_span], plain[~same_span]) and int(plain[7, 5]) == row(0)


def test_model_reads_in_span_order_without_leaking(single_process):
    cfg = tiny_config()
    par = ParallelConfig()
    [model] = build_model(cfg, transformer_config(cfg, par))
    init_weights([model], seed=3)
    model.eval()
    batch = _toy()
    with torch.no_grad():
        base = model(batch["tokens"], _attention(batch))[:, 0]  # [s, V]
        model.cfg.block_positions_relative = True
        relative = model(batch["tokens"], _attention(batch))[:, 0]
        changed = batch["tokens"].clone()
        changed[0, 7] = 99  # a later Part-B token
        later = model(changed, _attention(batch))[:, 0]
    assert torch.equal(relative[:5], base[:5])  # Part A has no span
    assert (relative[6:8] - base[6:8]).abs().max() > 1e-4  # inside span (x5 x6) the order is now seen
    assert (later[:7] - relative[:7]).abs().max() <= 1e-6
