"""Tensor parallelism is exact: TP=2 (two gloo processes) against TP=1 on the same weights and padded batch."""
import pytest
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

from megatron_vega import runtime
from megatron_vega.convert.hf_mapping import from_hf
from megatron_vega.model.attention_inputs import AttentionInputs
from megatron_vega.model.weights import gather_full_state_dict
from tests.distributed import spawn
from tests.model.helpers import hf_reference, padded_batch, tiny_config, vega_from_hf


def _step(cfg, hf, tp, sequence_parallel=False, recompute=None):
    """One forward+backward at the given TP; returns full (gathered) logits, loss and grads."""
    runtime.init_model_parallel(tp, 1, seed=7)
    model = vega_from_hf(cfg, hf, tp=tp, sequence_parallel=sequence_parallel)
    model.set_recompute(recompute)
    ids, mask = padded_batch(cfg.vocab_size, seq=72)
    flat_mask = mask.t().flatten()
    positions = torch.nonzero(flat_mask).squeeze(1)[::3]
    logits = model(ids, AttentionInputs(mask), lm_positions=positions)
    labels = ids.t().flatten()[positions]
    loss = vocab_parallel_cross_entropy(logits, labels).mean()
    loss.backward()
    group = parallel_state.get_tensor_model_parallel_group()
    for p in model.parameters():  # what finalize_model_grads does for sequence-parallel LayerNorms
        if sequence_parallel and getattr(p, "sequence_parallel", False):
            dist.all_reduce(p.grad, group=group)
    parts = [torch.empty_like(logits) for _ in range(tp)]
    dist.all_gather(parts, logits.detach().contiguous(), group=group)
    grads = gather_full_state_dict([model], grads=True)
    out = torch.cat(parts, dim=-1)[:, :cfg.vocab_size], loss.detach(), grads
    parallel_state.destroy_model_parallel()
    return out


def _worker(rank, world):
    cfg = tiny_config()
    hf = hf_reference(cfg)
    assert set(from_hf(hf.state_dict(), cfg))  # same seed on both ranks: identical reference weights
    ref_logits, ref_loss, ref_grads = _step(cfg, hf, tp=1)
    for sp, recompute in [(False, None), (True, None), (False, "selective"), (True, "full")]:
        logits, loss, grads = _step(cfg, hf, tp=2, sequence_parallel=sp, recompute=recompute)
        worst = max((grads[k] - ref_grads[k]).abs().max().item() for k in ref_grads)
        if rank == 0:
            print(f"TP=2 sp={sp} recompute={recompute}: |dlogits| {(logits - ref_logits).abs().max():.1e} "
                  f"|dloss| {(loss - ref_loss).abs():.1e} max |dgrad| {worst:.1e}")
        assert torch.allclose(logits, ref_logits, atol=1e-5, rtol=0)
        assert abs(loss - ref_loss) <= 1e-5
        for name, g in ref_grads.items():
            assert torch.allclose(grads[name], g, atol=1e-5, rtol=0), name


@pytest.mark.slow
def test_tp2_matches_tp1_with_and_without_sequence_parallel():
    spawn(_worker, 2)
