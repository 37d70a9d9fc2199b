"""Memory per rank and recomputation FLOPs (flops.py), checked against numbers worked out by hand for `tiny`
(h 64, 4 heads, p 64, FFN 256, 2 layers, vocab 1000, 2k = 64 relative rows, conv 3)."""
import pytest

from megatron_vega.config import ParallelConfig, model_preset
from megatron_vega.training.flops import (
    forward_flops_per_token,
    layer_activation_bytes,
    memory_per_rank,
    params_per_rank,
    recompute_flops_per_token,
    train_flops_per_token,
)

TINY = model_preset("tiny")


def par(tp=1, pp=1, sp=False, recompute=None, dist_opt=False):
    return ParallelConfig(tp, pp, sequence_parallel=sp, recompute_granularity=recompute,
                          use_distributed_optimizer=dist_opt)


def test_params_of_the_first_stage_by_hand():
    # layer: (4·64·64 + 3·64 + 64 + 2·64·256 + 256 + 64) / 2 + 4·64 = 25120; stage: 1 layer + relative table 64·64
    # + its LN 128 = 29344; embeddings: 1000·64/2 + 128 + conv 64·64·3 + 192 = 44608
    assert params_per_rank(TINY, par(tp=2, pp=2)) == 73952


@pytest.mark.parametrize("precision,weight_bytes,optim_bytes", [("bf16", 2, 12), ("fp16", 2, 12), ("fp32", 4, 8)])
def test_states_are_bytes_per_parameter_of_the_rank(precision, weight_bytes, optim_bytes):
    n = params_per_rank(TINY, par(tp=2, pp=2))
    memory = memory_per_rank(TINY, par(tp=2, pp=2), 32, 2, 4, precision)
    assert (memory["weights"], memory["gradients"], memory["optimizer"]) == (n * weight_bytes, n * 4, n * optim_bytes)
    sharded = memory_per_rank(TINY, par(tp=2, pp=2, dist_opt=True), 32, 2, 4, precision)
    assert sharded["optimizer"] == n * optim_bytes / 4  # ZeRO-1: optimizer state over DP = 4, the rest unchanged
    assert (sharded["weights"], sharded["gradients"]) == (memory["weights"], memory["gradients"])


def test_weights_split_by_tp_and_pp_apart_from_replicated_terms():
    cfg = model_preset("vega-6b")
    layer = 12 * 4096 ** 2  # QKV, output, FFN at h = 4096, FFN 4h
    for tp, pp in [(2, 2), (4, 2), (8, 4)]:
        # the first stage: its share of the layers and the embeddings, split by TP; the conv and the relative
        # table replicated (biases and LayerNorms make up the rest)
        expected = 24 // pp * layer // tp + cfg.padded_vocab_size * 4096 // tp + 3 * 4096 ** 2 + 512 * 4096
        assert params_per_rank(cfg, par(tp=tp, pp=pp)) == pytest.approx(expected, rel=1e-3)


def test_layer_activations_by_hand():
    # s 32, b 2, TP 2 with SP: kept 10·sbh/2 + (8·sbp + 4·sbf)/2 = 20480 + 49152; relative table 64·(3·64 + 4·64/2)
    # = 20480; attention core (2·a·s²·b + 4·a·s·b)/2 = 8704
    assert layer_activation_bytes(TINY, 32, 2, 2, True, None) == 69632 + 20480 + 8704
    assert layer_activation_bytes(TINY, 32, 2, 2, True, "selective") == 69632 + 20480
    assert layer_activation_bytes(TINY, 32, 2, 2, True, "full") == 2 * 32 * 2 * 64 / 2
    # without SP the 10·sbh terms stay whole
    assert layer_activation_bytes(TINY, 32, 2, 2, False, None) == 10 * 4096 + 49152 + 20480 + 8704


def test_activations_per_rank_by_hand():
    embeddings = 5 * 4096 / 2 + (2 + 9 / 2) * 4096  # LN and dropout split by SP; the conv keeps its gathered input
    head = 8 * 0.15 * 64 * 64 + 8 * 0.15 * 64 * 1000 / 2  # dense/GELU/LN at 9.6 predicted positions; fp32 logits
    mem = lambda p, precision="bf16", m=None: memory_per_rank(TINY, p, 32, 2, 1, precision,  # noqa: E731
                                                              micro_batches=m)["activations"]
    assert mem(par(tp=2, sp=True)) == pytest.approx(2 * 98816 + embeddings + head)
    # full: the layer inputs, plus one layer rebuilt in the backward
    assert mem(par(tp=2, sp=True, recompute="full")) == pytest.approx(2 * 4096 + embeddings + 98816 + head)
    # PP 2: one layer per stage, the head on the last stage, 1F1B keeps min(PP, micro-batches) in flight
    assert mem(par(tp=2, pp=2, sp=True), m=8) == pytest.approx(2 * (98816 + embeddings))
    assert mem(par(tp=2, pp=2, sp=True), m=1) == pytest.approx(98816 + embeddings)
    # fp32 doubles the activations, not the (already fp32) logits
    assert mem(par(tp=2, sp=True), "fp32") == pytest.approx(2 * (2 * 98816 + embeddings + 8 * 0.15 * 64 * 64)
                                                            + 8 * 0.15 * 64 * 1000 / 2)


def test_recompute_and_sequence_parallel_reduce_activations_at_vega_6b():
    cfg = model_preset("vega-6b")
    acts = {(sp, rc): memory_per_rank(cfg, par(tp=4, pp=2, sp=sp, recompute=rc), 512, 4, 40, "bf16",
                                      micro_batches=16)["activations"]
            for sp in (False, True) for rc in (None, "selective", "full")}
    for sp in (False, True):
        assert acts[sp, "full"] < acts[sp, "selective"] < acts[sp, None]
        assert acts[sp, "full"] < acts[sp, None] / 4
    for rc in (None, "selective", "full"):
        assert acts[True, rc] < acts[False, rc]


def test_recompute_flops():
    cfg = model_preset("vega-6b")
    fwd = forward_flops_per_token(cfg, 512, 0.15, micro_batch_size=4)
    assert recompute_flops_per_token(cfg, 512, None, 4) == 0
    # selective: QK^T and PV (2·s·p MACs) and the c2p/p2c products against 2k = 512 rows (2·512·p), 24 layers
    assert recompute_flops_per_token(cfg, 512, "selective", 4) == 2 * 24 * (2 * 512 * 4096 + 2 * 512 * 4096)
    # full: the whole forward but the embeddings' conv and the MLM head
    head = 2 * (3 * 4096 ** 2 + 0.15 * (4096 ** 2 + 4096 * cfg.vocab_size))
    assert recompute_flops_per_token(cfg, 512, "full", 4) == pytest.approx(fwd - head)
    assert train_flops_per_token(cfg, 512, 0.15, micro_batch_size=4) == pytest.approx(3 * fwd)
