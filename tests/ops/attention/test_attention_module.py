"""The attention module (projections + core) on every mask and position case, at TP=1 and TP=2 (one two-process
launch), against the dense reference computed from the full weights; and per-sample positions equal to arange
reproduce the shared-index model bit for bit."""
import math

import pytest
import torch
from megatron.core import parallel_state

from megatron_vega import runtime
from megatron_vega.config import ParallelConfig
from megatron_vega.model.attention import DisentangledSelfAttention
from megatron_vega.model.attention_inputs import AttentionInputs
from megatron_vega.model.build import transformer_config
from tests.distributed import spawn
from tests.model.helpers import hf_reference, padded_batch, tiny_config, vega_from_hf
from tests.ops.attention import reference
from tests.ops.attention.cases import CASES, CPU_CORES, B, S, case, padding

P = 3


def _config(core: str):
    # the reference's bucketing: 4 buckets over a range of 16 (attention span 4)
    return tiny_config(attention_backend=core, position_buckets=reference.BUCKETS,
                       max_position_embeddings=reference.MAX_POSITION)


def _full_weights(cfg):
    gen = torch.Generator().manual_seed(3)
    proj = cfg.num_attention_heads * cfg.kv_channels
    rand = lambda *shape: torch.randn(*shape, generator=gen) * 0.2  # noqa: E731
    return {"qkv.w": rand(3 * proj, cfg.hidden_size), "qkv.b": rand(3 * proj), "proj.w": rand(cfg.hidden_size, proj),
            "proj.b": rand(cfg.hidden_size)}


def _reference(cfg, w, x, rel, fields, prefix):
    """The module's function from the full weights: fused QKV rows [heads, 3, d], Kr/Qr from the K/Q rows
    (share_att_key), the formula, the output projection."""
    heads, d = cfg.num_attention_heads, cfg.kv_channels
    qkv = (x @ w["qkv.w"].t() + w["qkv.b"]).view(S, B, heads, 3, d).permute(3, 1, 2, 0, 4)
    table = (rel @ w["qkv.w"].t() + w["qkv.b"]).view(-1, heads, 3, d).permute(2, 1, 0, 3)  # [3, heads, 2k, d]
    positions = fields.get("position_ids", torch.arange(S).expand(B, S))
    allowed = reference.allowed_pairs(padding(), fields.get("prefix_lengths"), fields.get("block_ids"),
                                      fields.get("attention_mask"))
    context = reference.attention(qkv[0], qkv[1], qkv[2], table[1], table[0], reference.bucketed_index(positions),
                                  allowed, 1 / math.sqrt(3 * d), prefix)
    return context.permute(2, 0, 1, 3).reshape(S, B, heads * d) @ w["proj.w"].t() + w["proj.b"]


def _compare_module(tp: int, core: str, name: str, prefix_len: int) -> float:
    rank = parallel_state.get_tensor_model_parallel_rank()
    cfg = _config(core)
    w = _full_weights(cfg)
    module = DisentangledSelfAttention(cfg, transformer_config(cfg, ParallelConfig(tensor_model_parallel_size=tp)),
                                       torch.nn.init.zeros_, torch.nn.init.zeros_).eval()
    assert module.core.name == core
    local = {"qkv.w": w["qkv.w"].chunk(tp, 0)[rank], "qkv.b": w["qkv.b"].chunk(tp, 0)[rank],
             "proj.w": w["proj.w"].chunk(tp, 1)[rank], "proj.b": w["proj.b"]}
    params = {"qkv.w": module.linear_qkv.weight, "qkv.b": module.linear_qkv.bias,
              "proj.w": module.linear_proj.weight, "proj.b": module.linear_proj.bias}
    with torch.no_grad():
        for key, p in params.items():
            p.copy_(local[key])
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(S, B, cfg.hidden_size, generator=gen).requires_grad_()
    rel = torch.randn(2 * cfg.attention_span, cfg.hidden_size, generator=gen).requires_grad_()
    shape = (B, cfg.num_attention_heads, prefix_len, cfg.kv_channels)
    prefix = (torch.randn(*shape, generator=gen).requires_grad_(), torch.randn(*shape, generator=gen).requires_grad_())
    heads = slice(rank * module.heads, (rank + 1) * module.heads)
    fields = case(name)
    inputs = AttentionInputs(padding(), **fields, prefix=[tuple(t[:, heads] for t in prefix)] if prefix_len else None)
    out = module(x, rel, inputs.relative_index(cfg.position_buckets, cfg.max_relative, cfg.attention_span),
                 inputs.mask_bias(x.dtype), inputs.prefix[0] if prefix_len else None)
    grad = torch.randn(S, B, cfg.hidden_size, generator=gen) * 0.05  # weight grads (sums over tokens) of order 1
    leaves = [x, rel, *(prefix if prefix_len else ())]
    grads = torch.autograd.grad(out, leaves + list(params.values()), grad)
    ref_weights = {k: v.clone().requires_grad_() for k, v in w.items()}
    ref = _reference(cfg, ref_weights, x, rel, fields, prefix if prefix_len else None)
    ref_grads = torch.autograd.grad(ref, leaves + list(ref_weights.values()), grad)
    worst = (out - ref).abs().max().item()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    for i, (g, r) in enumerate(zip(grads, ref_grads, strict=True)):
        if i in (2, 3) and prefix_len:  # prefix k/v: this rank's heads got the gradient, the others none
            g, r = g[:, heads], r[:, heads]
        elif i >= len(leaves):  # weights: this rank's shard of the full gradient
            key = list(params)[i - len(leaves)]
            r = r if key == "proj.b" else r.chunk(tp, 1 if key == "proj.w" else 0)[rank]
        torch.testing.assert_close(g, r, rtol=0, atol=1e-5)
        worst = max(worst, (g - r).abs().max().item())
    return worst


def _worker(rank, world):
    for tp in (1, 2):
        runtime.init_model_parallel(tp, 1, seed=7)
        worst = max(_compare_module(tp, core, name, prefix_len)
                    for core in CPU_CORES for name in CASES for prefix_len in (0, P))
        if rank == 0:
            print(f"TP={tp}: max |module - dense reference| over outputs and gradients {worst:.1e}")
        parallel_state.destroy_model_parallel()


@pytest.mark.slow
def test_module_matches_the_dense_reference_at_tp1_and_tp2():
    spawn(_worker, 2)


@pytest.mark.parametrize("core", CPU_CORES)
def test_arange_positions_reproduce_the_shared_index_bit_for_bit(single_process, core):
    cfg = tiny_config(attention_backend=core)
    model = vega_from_hf(cfg, hf_reference(cfg))
    ids, mask = padded_batch(cfg.vocab_size)
    arange = torch.arange(ids.shape[1]).expand_as(ids)
    results = []
    for inputs in (AttentionInputs(mask), AttentionInputs(mask, position_ids=arange)):
        model.zero_grad()
        logits = model(ids, inputs)
        logits.square().mean().backward()
        results.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    (logits, grads), (logits_arange, grads_arange) = results
    assert torch.equal(logits, logits_arange)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_arange, strict=True))
