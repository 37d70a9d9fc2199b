"""Model FLOPs and memory arithmetic for the encoder, shared by logging, --dry-run and benchmarks.

Model FLOPs count the matrix products of the model as defined, not recomputation: forward = 2 x MACs,
training = 3 x forward. The MLM output layer is counted only at the predicted (masked) positions, which is all
this framework computes. Recomputation is counted apart (recompute_flops_per_token: hardware FLOPs). Memory per
rank (memory_per_rank) is an estimate term by term: states by bytes per parameter, activations per layer after
Korthikanti et al. 2022 adapted to this encoder's fused attention and relative-position bias.
"""
from megatron_vega.config import ModelConfig, ParallelConfig


def _layer_macs_per_token(cfg: ModelConfig, seq_length: int, micro_batch_size: int) -> tuple[float, float, float]:
    """Multiply-accumulates per token of one layer: (linear, attention core, relative-table projection)."""
    h, f, p = cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_attention_heads * cfg.kv_channels
    c2p, p2c = cfg.pos_terms
    span2 = 2 * cfg.attention_span
    linear = 3 * h * p + p * h + 2 * h * f  # QKV, output projection, FFN
    attention = 2 * seq_length * p + (c2p + p2c) * span2 * p  # QK^T, PV, and Q.Kr^T / K.Qr^T against 2k rows
    # projecting the relative table: once per layer and micro-batch, shared by all its tokens
    positions = (c2p + p2c) * span2 * h * p / (seq_length * micro_batch_size)
    return linear, attention, positions


def forward_flops_per_token(cfg: ModelConfig, seq_length: int, predicted_fraction: float = 0.15,
                            micro_batch_size: int = 1) -> float:
    h = cfg.hidden_size
    layer = sum(_layer_macs_per_token(cfg, seq_length, micro_batch_size))
    conv = h * h * cfg.conv_kernel_size if cfg.conv_kernel_size else 0
    head = predicted_fraction * (h * h + h * cfg.vocab_size)
    return 2.0 * (cfg.num_layers * layer + conv + head)


def train_flops_per_token(cfg: ModelConfig, seq_length: int, predicted_fraction: float = 0.15,
                          reference_forward: bool = False, micro_batch_size: int = 1) -> float:
    """3 x forward; self-evolution adds one no-grad reference forward (all positions' logits are needed at the
    predicted positions only, so its head cost is the same)."""
    fwd = forward_flops_per_token(cfg, seq_length, predicted_fraction, micro_batch_size)
    return (4.0 if reference_forward else 3.0) * fwd


def params_per_rank(cfg: ModelConfig, par: ParallelConfig) -> int:
    """Parameters held by the most loaded rank (first pipeline stage: embeddings + its layers)."""
    h, f, p = cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_attention_heads * cfg.kv_channels
    tp, pp = par.tensor_model_parallel_size, par.pipeline_model_parallel_size
    pos = 0 if cfg.share_att_key else sum(cfg.pos_terms) * (h * p + p)
    layer = (4 * h * p + 3 * p + h + 2 * h * f + f + h + pos) // tp + 4 * h
    stage = (cfg.num_layers // pp) * layer + 2 * cfg.attention_span * h + 2 * h
    embeddings = cfg.padded_vocab_size * h // tp + 2 * h + (h * h * cfg.conv_kernel_size + 3 * h)
    head = h * h + 3 * h + cfg.padded_vocab_size // tp + (cfg.padded_vocab_size * h // tp if pp > 1 else 0)
    return stage + embeddings + (head if pp == 1 else 0)


def recompute_flops_per_token(cfg: ModelConfig, seq_length: int, recompute: str | None,
                              micro_batch_size: int = 1) -> float:
    """Forward FLOPs per token run again in the backward pass (hardware, not model FLOPs): the attention core
    (QK^T, PV and the relative terms) with 'selective', whole layers with 'full'; embeddings and head never."""
    if recompute is None:
        return 0.0
    linear, attention, positions = _layer_macs_per_token(cfg, seq_length, micro_batch_size)
    per_layer = attention if recompute == "selective" else linear + attention + positions
    return 2.0 * cfg.num_layers * per_layer


def layer_activation_bytes(cfg: ModelConfig, seq_length: int, micro_batch: int, tp: int, sequence_parallel: bool,
                           recompute: str | None) -> float:
    """Bytes one layer keeps for its backward, per micro-batch, in 16 bits (Korthikanti et al. 2022, Table 2,
    with p = heads x head_dim and f = FFN size; p = h, f = 4h gives their 34·s·b·h).

    Kept whole (split only by sequence parallelism): the two LayerNorm inputs (4sbh), the QKV and FFN-in inputs
    (4sbh), the two dropout masks (2sbh). Split by TP: Q, K, V and the output-projection input (8sbp), the GELU
    input and output (4sbf). The softmax and its dropout run inside fused SDPA (memory-efficient kernel), which
    keeps only a fp32 log-sum-exp per row (4as·b); what it keeps that Korthikanti's 5as²b does not cover is the
    additive c2p + p2c + mask bias [b, a, s, s] (2as²b). The relative table (dropout output and mask, the projected
    Kr/Qr) adds 2k(3h + 4p/tp) per micro-batch. 'selective' recomputes the attention core (drops the s² and
    log-sum-exp terms), 'full' keeps only the layer input (2sbh).
    """
    s, b, h, a = seq_length, micro_batch, cfg.hidden_size, cfg.num_attention_heads
    p, f = cfg.num_attention_heads * cfg.kv_channels, cfg.ffn_hidden_size
    sp = tp if sequence_parallel else 1
    if recompute == "full":
        return 2 * s * b * h / sp
    kept = 10 * s * b * h / sp + (8 * s * b * p + 4 * s * b * f) / tp
    span2 = 2 * cfg.attention_span
    table = span2 * (3 * h + 4 * p / tp) if any(cfg.pos_terms) else 0
    core = 0 if recompute == "selective" else (2 * a * s * s * b + 4 * a * s * b) / tp
    return kept + table + core


def memory_per_rank(cfg: ModelConfig, par: ParallelConfig, seq_length: int, micro_batch: int, dp: int,
                    precision: str, micro_batches: int | None = None,
                    predicted_fraction: float = 0.15) -> dict[str, float]:
    """Bytes on the busiest rank, the first pipeline stage: weights, grads, optimizer state, activations (estimate).

    Weights in the training dtype (params_per_rank: the first stage's layers, embeddings and nGiE conv, plus the
    MLM head when PP = 1); a fp32 gradient buffer (grad_reduce_in_fp32); Adam's two fp32 moments plus fp32 main
    weights when training in 16 bits, divided by DP with the distributed optimizer (ZeRO-1; the gradient buffer
    stays whole). Activations: layer_activation_bytes for the stage's layers and the embeddings (LayerNorm input
    and output, dropout mask: 5sbh; the nGiE conv keeps its gathered input, 2sbh, and 9sbh more), for each
    micro-batch in flight: 1F1B keeps min(PP, micro-batches) on the first stage. 'full' recompute adds one layer
    rebuilt at a time in the backward. With PP = 1 the rank also holds the MLM head at the predicted positions
    only (n = fraction·s·b: 8nh for dense, GELU, LayerNorm; fp32 logits and the loss's fp32 softmax, 8n·V/tp).
    fp32 training doubles the activations (not the fp32 logits). Not counted: the CUDA context, NCCL and allocator
    buffers and fragmentation, and the interleaved schedule's extra in-flight micro-batches.
    """
    n = params_per_rank(cfg, par)
    tp, pp = par.tensor_model_parallel_size, par.pipeline_model_parallel_size
    wbytes = 4 if precision == "fp32" else 2
    optim = 8 + (4 if precision != "fp32" else 0)
    if par.use_distributed_optimizer:
        optim /= dp
    s, b, h = seq_length, micro_batch, cfg.hidden_size
    sp = tp if par.sequence_parallel and tp > 1 else 1
    layers = (cfg.num_layers // pp) * layer_activation_bytes(cfg, s, b, tp, sp > 1, par.recompute)
    embeddings = 5 * s * b * h / sp + ((2 + 9 / sp) * s * b * h if cfg.conv_kernel_size else 0)
    in_flight = pp if micro_batches is None else min(pp, micro_batches)
    activations = in_flight * (layers + embeddings)
    if par.recompute == "full":
        activations += layer_activation_bytes(cfg, s, b, tp, sp > 1, None)
    activations *= wbytes / 2
    if pp == 1:
        predicted = predicted_fraction * s * b
        activations += 8 * predicted * h * wbytes / 2 + 8 * predicted * cfg.padded_vocab_size / tp
    return {"weights": n * wbytes, "gradients": n * 4.0, "optimizer": n * optim, "activations": activations}
