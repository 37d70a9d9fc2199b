"""The post-LN encoder layer and the nGiE convolution (DeBERTa-v2; docs/attention.md)."""
import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel

from megatron_vega import runtime
from megatron_vega.config import ModelConfig
from megatron_vega.model.attention import DisentangledSelfAttention
from megatron_vega.ops import fused_layer
from megatron_vega.ops.dropout import dropout
from megatron_vega.ops.kernels import layer_norm

_ACTIVATIONS = {"gelu": F.gelu, "tanh": torch.tanh, "relu": F.relu}


def hidden_dropout(x: torch.Tensor, p: float, training: bool, sequence_parallel: bool) -> torch.Tensor:
    """Dropout on [s, b, H]. Replicated activations use the default RNG (identical on TP ranks); sequence-parallel
    chunks differ per rank, so they draw from the model-parallel RNG tracker."""
    if not training or p == 0.0:
        return x
    if sequence_parallel:
        with tensor_parallel.get_cuda_rng_tracker().fork():
            return dropout(x, p)
    return dropout(x, p)


class VegaLayer(torch.nn.Module):
    """x -> LN(x + drop(Attn(x))) -> LN(h + drop(FFN(h))): post-LN, as DeBERTa and original BERT."""

    def __init__(self, cfg: ModelConfig, mp_config, init_method):
        super().__init__()
        self.sequence_parallel = mp_config.sequence_parallel
        self.dropout = cfg.hidden_dropout
        self.attention = DisentangledSelfAttention(cfg, mp_config, init_method, init_method)
        self.post_attention_layernorm = layer_norm(cfg.hidden_size, cfg.layernorm_epsilon, self.sequence_parallel)
        self.linear_fc1 = tensor_parallel.ColumnParallelLinear(
            cfg.hidden_size, cfg.ffn_hidden_size, config=mp_config, init_method=init_method, bias=True,
            skip_bias_add=True)
        self.linear_fc2 = tensor_parallel.RowParallelLinear(
            cfg.ffn_hidden_size, cfg.hidden_size, config=mp_config, init_method=init_method, bias=True,
            input_is_parallel=True, skip_bias_add=False)
        self.post_mlp_layernorm = layer_norm(cfg.hidden_size, cfg.layernorm_epsilon, self.sequence_parallel)

    def forward(self, hidden, rel_embeddings, rel_index, mask_bias, prefix=None):
        attn = self.attention(hidden, rel_embeddings, rel_index, mask_bias, prefix)
        hidden = self._add_norm(attn, hidden, self.post_attention_layernorm)
        inner, bias = self.linear_fc1(hidden)
        # exact (erf) GELU, as DeBERTa; fused with the bias on CUDA (ops/fused_layer.py)
        act = fused_layer.bias_gelu(inner, bias) if fused_layer.enabled(inner) else F.gelu(inner + bias)
        out, _ = self.linear_fc2(act)
        return self._add_norm(out, hidden, self.post_mlp_layernorm)

    def _add_norm(self, x, residual, norm):
        """norm(residual + dropout(x)): one Triton kernel each way on CUDA, the torch ops elsewhere."""
        if not fused_layer.enabled(x):
            return norm(residual + hidden_dropout(x, self.dropout, self.training, self.sequence_parallel))
        if self.sequence_parallel and self.training and self.dropout > 0:  # as hidden_dropout: per-rank chunks
            with tensor_parallel.get_cuda_rng_tracker().fork():
                return fused_layer.dropout_add_layer_norm(x, residual, norm, self.dropout, self.training)
        return fused_layer.dropout_add_layer_norm(x, residual, norm, self.dropout, self.training)


class ConvLayer(torch.nn.Module):
    """nGiE: LN(layer0_out + act(drop(conv1d(embedding_out)))) * input_mask. The conv is replicated on TP ranks;
    with sequence parallelism it runs on the gathered sequence (it needs its neighbours) and each rank keeps its
    chunk, so its grads come out identical on every rank and need no all-reduce."""

    def __init__(self, cfg: ModelConfig, sequence_parallel: bool):
        super().__init__()
        self.sequence_parallel = sequence_parallel
        self.dropout = cfg.hidden_dropout
        self.act = _ACTIVATIONS[cfg.conv_act]
        k = cfg.conv_kernel_size
        self.conv = torch.nn.Conv1d(cfg.hidden_size, cfg.hidden_size, k, padding=(k - 1) // 2)
        self.layernorm = layer_norm(cfg.hidden_size, cfg.layernorm_epsilon, sequence_parallel)

    def forward(self, embedding_out, layer0_out, input_mask, allowed=None):
        """embedding_out, layer0_out: [s(/tp), b, H]; input_mask: [s(/tp), b, 1] of this rank's chunk; allowed:
        the batch's AttentionInputs.convolution_mask() [b, s, s] (True = token i may read neighbour j) or None. A
        neighbour the attention hides from i is hidden from the convolution at i too (GLM's Part B must not see
        its next token through the convolution, nor Part A its first: docs/glm_and_cloze.md); UniMC's options
        read no neighbour outside their own option (docs/unimc_and_ppt.md)."""
        full = embedding_out
        if self.sequence_parallel:
            full = tensor_parallel.gather_from_sequence_parallel_region(
                embedding_out, tensor_parallel_output_grad=False)
        conv = self.conv
        if allowed is None:
            out = runtime.in_fp32(F.conv1d, full.permute(1, 2, 0), conv.weight, conv.bias, padding=conv.padding)
        else:
            out = runtime.in_fp32(masked_conv1d, full.permute(1, 2, 0), conv.weight, conv.bias, allowed)
        out = out.permute(2, 0, 1)  # [s, b, H]
        if self.sequence_parallel:
            out = tensor_parallel.scatter_to_sequence_parallel_region(out)
        out = out * input_mask  # padding positions of the conv output are zeroed before the activation
        out = self.act(hidden_dropout(out, self.dropout, self.training, self.sequence_parallel))
        return self.layernorm(layer0_out + out) * input_mask


def masked_conv1d(x, weight, bias, allowed):
    """F.conv1d with 'same' padding on x [b, H, s], except that tap t of output i (which reads x[i + t - c],
    c = (k - 1) // 2) counts only where allowed[b, i, i + t - c]: one [H, H] product per tap."""
    k, s = weight.shape[-1], x.shape[-1]
    out = bias[None, :, None].expand(x.shape[0], -1, s)
    for t in range(k):
        offset = t - (k - 1) // 2
        lo, hi = max(0, -offset), min(s, s - offset)  # outputs whose tap t reads inside the sequence
        if lo >= hi:
            continue
        keep = torch.diagonal(allowed, offset=offset, dim1=1, dim2=2).to(x.dtype)  # [b, hi - lo]
        tap = torch.einsum("oh,bhs->bos", weight[:, :, t], x[:, :, lo + offset:hi + offset]) * keep[:, None, :]
        out = out + F.pad(tap, (lo, s - hi))
    return out
