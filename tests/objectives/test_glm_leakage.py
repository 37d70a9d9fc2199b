"""Issue 20, check 2: GLM's mask and positions leak nothing, at TP=1 and TP=2 (fp32, to 1e-6): changing Part B
leaves Part A's outputs unchanged, and Part B's output at step t does not depend on Part-B tokens after t. The same
run checks that TP=2 gives TP=1's logits."""
import numpy as np
import pytest
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_vega import runtime
from megatron_vega.config import ParallelConfig
from megatron_vega.data.glm_blanks import GLMSpecialIds, glm_layout
from megatron_vega.model.attention_inputs import AttentionInputs
from megatron_vega.model.build import build_model, transformer_config
from megatron_vega.model.weights import init_weights
from tests.distributed import spawn
from tests.model.helpers import tiny_config

SEQ = 48
IDS = GLMSpecialIds(mask=4, sop=996, eop=997, smask=998, gmask=999, pad=0)


def _batch():
    """Two GLM samples of different lengths (the second padded), as tensors [2, SEQ]."""
    rng = np.random.default_rng(3)
    samples = [glm_layout(rng.integers(5, 900, size=30), [(3, 6), (10, 11), (20, 24)], [4, 4, 4], [2, 0, 1], IDS,
                          SEQ),
               glm_layout(rng.integers(5, 900, size=20), [(2, 4), (12, 16)], [4, 4], [1, 0], IDS, SEQ)]
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])).long() for k in samples[0]}


def _logits(model, batch):
    attention = AttentionInputs(batch["padding_mask"], prefix_lengths=batch["prefix_lengths"],
                                position_ids=batch["position_ids"], block_position_ids=batch["block_position_ids"])
    with torch.no_grad():
        return model(batch["tokens"], attention).transpose(0, 1)  # [b, s, V/tp]


def _changed_after(batch, t: int, seed: int):
    """The batch with every real Part-B token after position t replaced (Part A when t < the prefix)."""
    changed = {k: v.clone() for k, v in batch.items()}
    gen = torch.Generator().manual_seed(seed)
    for row in range(len(changed["tokens"])):
        first = max(t + 1, int(batch["prefix_lengths"][row]))
        real = int(batch["padding_mask"][row].sum())
        changed["tokens"][row, first:real] = torch.randint(5, 900, (max(real - first, 0),), generator=gen)
    return changed


def _check_layout(tp: int):
    runtime.init_model_parallel(tp, 1, seed=5)
    cfg = tiny_config(block_position_embeddings=SEQ + 1)
    [model] = build_model(cfg, transformer_config(cfg, ParallelConfig(tensor_model_parallel_size=tp)))
    init_weights([model], seed=11)
    model.eval()
    batch = _batch()
    base = _logits(model, batch)
    # Part A: anything in Part B may change
    prefix = batch["prefix_lengths"]
    other = _logits(model, _changed_after(batch, -1, seed=1))
    for row in range(2):
        a = int(prefix[row])
        assert (other[row, :a] - base[row, :a]).abs().max() <= 1e-6
        assert (other[row, a:] - base[row, a:]).abs().max() > 1e-3  # the change is visible where it may be
    # Part B at step t: the tokens after t may change
    for offset in (0, 2, 5):
        t = int(prefix[0]) + offset
        other = _logits(model, _changed_after(batch, t, seed=2 + offset))
        assert (other[0, :t + 1] - base[0, :t + 1]).abs().max() <= 1e-6, offset
        assert (other[0, t + 2:] - base[0, t + 2:]).abs().max() > 1e-3, offset
    group = parallel_state.get_tensor_model_parallel_group()
    parts = [torch.empty_like(base) for _ in range(tp)]
    dist.all_gather(parts, base.contiguous(), group=group)
    parallel_state.destroy_model_parallel()
    return torch.cat(parts, dim=-1)


def _worker(rank, world):
    tp1 = _check_layout(1)
    tp2 = _check_layout(2)
    assert (tp2 - tp1).abs().max() <= 1e-5


@pytest.mark.slow
def test_no_leakage_at_tp1_and_tp2():
    spawn(_worker, 2)
