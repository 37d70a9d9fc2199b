"""The Vega encoder: embeddings -> post-LN disentangled-attention layers -> MLM head, one pipeline chunk of it.

Activations are [sequence, batch, hidden] (Megatron's layout, needed for sequence parallelism and the pipeline
schedules). A chunk owns layers [first, last); the first chunk owns the embeddings and the nGiE conv, the last
the MLM head. Every chunk owns a copy of the relative-embedding table (all layers use it); its grads are summed
across pipeline stages by megatron-core (params tagged ``pipeline_parallel``, config ``has_cond_embedder``).
Copies that exist on more than one chunk (the relative table and its LayerNorm, the last stage's tied output
weight) are tagged ``shared`` except on the first chunk, so megatron-core's grad norm counts each once.
"""
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region
from megatron.core.transformer.enums import ModelType
from megatron.core.transformer.module import MegatronModule

from megatron_vega import runtime
from megatron_vega.config import ModelConfig
from megatron_vega.model.attention_inputs import AttentionInputs
from megatron_vega.model.layer import ConvLayer, VegaLayer, hidden_dropout
from megatron_vega.ops.kernels import layer_norm

# Padded vocabulary entries get this logit: out of every softmax, yet finite (0 * logit stays 0 in soft-target CE).
PADDED_VOCAB_LOGIT = -1e30


def init_normal(std: float):
    return lambda w: torch.nn.init.normal_(w, mean=0.0, std=std)


class MLMHead(torch.nn.Module):
    """dense -> GELU -> LN -> logits against the (tied) vocab-parallel word embeddings + a vocab-parallel bias."""

    def __init__(self, cfg: ModelConfig, tp_size: int):
        super().__init__()
        self.dense = torch.nn.Linear(cfg.hidden_size, cfg.hidden_size)
        init_normal(cfg.init_method_std)(self.dense.weight)
        torch.nn.init.zeros_(self.dense.bias)
        self.layernorm = layer_norm(cfg.hidden_size, cfg.layernorm_epsilon)
        per_rank = cfg.padded_vocab_size // tp_size
        self.bias = torch.nn.Parameter(torch.zeros(per_rank))
        tensor_parallel.set_tensor_model_parallel_attributes(self.bias, True, 0, 1)
        start = parallel_state.get_tensor_model_parallel_rank() * per_rank
        real = torch.arange(start, start + per_rank) < cfg.vocab_size
        self.register_buffer("vocab_pad", torch.where(real, 0.0, PADDED_VOCAB_LOGIT), persistent=False)

    def forward(self, hidden, output_weight):
        """hidden: [n, H] (replicated on TP ranks) -> fp32 logits over this rank's vocabulary shard [n, V/tp]."""
        h = self.layernorm(F.gelu(runtime.in_fp32(F.linear, hidden, self.dense.weight, self.dense.bias)))
        logits = runtime.linear_in_fp32(copy_to_tensor_model_parallel_region(h), output_weight) + self.bias
        return logits.float() + self.vocab_pad


def _layer_call(layer, hidden, rel, rel_index, mask_bias, prefix_key, prefix_value):
    """A layer call with the prefix as two tensors: the recompute checkpoint saves tensors, not tuples."""
    return layer(hidden, rel, rel_index, mask_bias, None if prefix_key is None else (prefix_key, prefix_value))


class VegaModel(MegatronModule):
    def __init__(self, cfg: ModelConfig, mp_config, layers: tuple[int, int] | None = None,
                 pre_process: bool = True, post_process: bool = True, add_mlm_head: bool = True):
        super().__init__(config=mp_config)
        self.model_type = ModelType.encoder_or_decoder  # read by megatron-core's schedules
        self.cfg = cfg
        self.pre_process, self.post_process = pre_process, post_process
        self.sequence_parallel = mp_config.sequence_parallel
        # True on every stage (megatron-core all-reduces the tied weight's grads between first and last stage
        # only where this is set); has_mlm_head marks the chunk that computes the head.
        self.share_embeddings_and_output_weights = add_mlm_head
        self.has_mlm_head = add_mlm_head and post_process
        self.first_layer, last = layers or (0, cfg.num_layers)
        init = init_normal(cfg.init_method_std)
        tp = mp_config.tensor_model_parallel_size
        self.input_tensor = None
        self.recompute = None

        # Parameters whose grads are all-reduced across pipeline stages after the data-parallel reduction need their
        # own DDP bucket (megatron-core does so for params tagged shared_embedding): the distributed optimizer's
        # reduce-scatter then leaves each data-parallel rank the same slice of every copy, and the cross-stage sum
        # adds reduced slices only. In a shared bucket the slices differ by stage and the sum mixes in partial grads.
        cross_stage = mp_config.pipeline_model_parallel_size > 1
        if pre_process:
            self.word_embeddings = tensor_parallel.VocabParallelEmbedding(
                cfg.padded_vocab_size, cfg.hidden_size, init_method=init, config=mp_config)
            self.word_embeddings.weight.shared_embedding = cross_stage and add_mlm_head
            self.embedding_layernorm = layer_norm(cfg.hidden_size, cfg.layernorm_epsilon, self.sequence_parallel)
        self.rel_embeddings = torch.nn.Embedding(2 * cfg.attention_span, cfg.hidden_size)
        init(self.rel_embeddings.weight)
        self.rel_layernorm = layer_norm(cfg.hidden_size, cfg.layernorm_epsilon) if cfg.norm_rel_ebd else None
        for p in self._rel_params():
            p.pipeline_parallel = True
            p.shared_embedding = cross_stage
            # After the cross-stage all-reduce every copy holds the full grad: megatron-core's grad norm (and
            # clipping) must count it once, so all copies but the first chunk's are marked shared (skipped there).
            p.shared = not pre_process
        self.layers = torch.nn.ModuleList(VegaLayer(cfg, mp_config, init) for _ in range(self.first_layer, last))
        self.conv = (ConvLayer(cfg, self.sequence_parallel)
                     if cfg.conv_kernel_size > 0 and self.first_layer == 0 and len(self.layers) else None)
        if self.has_mlm_head:
            self.lm_head = MLMHead(cfg, tp)
            if not pre_process:  # last stage: a copy of the word embeddings, synced with the first stage
                self.output_weight = torch.nn.Parameter(torch.zeros(cfg.padded_vocab_size // tp, cfg.hidden_size))
                tensor_parallel.set_tensor_model_parallel_attributes(self.output_weight, True, 0, 1)
                self.output_weight.shared_embedding = True
                self.output_weight.shared = True  # the first stage's word embeddings count in the grad norm

    def _rel_params(self):
        yield self.rel_embeddings.weight
        if self.rel_layernorm is not None:
            yield from self.rel_layernorm.parameters()

    def set_recompute(self, mode: str | None) -> None:
        """'selective': recompute the attention core; 'full': recompute whole layers."""
        self.recompute = mode
        for layer in self.layers:
            layer.attention.recompute_core = mode == "selective"

    # -- megatron-core pipeline hooks ----------------------------------------------------------------------
    def set_input_tensor(self, input_tensor):
        self.input_tensor = input_tensor[0] if isinstance(input_tensor, (list, tuple)) else input_tensor

    def shared_embedding_or_output_weight(self):
        if self.pre_process:
            return self.word_embeddings.weight
        return self.output_weight if self.has_mlm_head else None

    # -- forward --------------------------------------------------------------------------------------------
    def _local_sequence(self, x):
        """The rank's sequence chunk of a replicated [s, b, ...] tensor under sequence parallelism."""
        if not self.sequence_parallel:
            return x
        tp, rank = parallel_state.get_tensor_model_parallel_world_size(), parallel_state.get_tensor_model_parallel_rank()
        return x.chunk(tp, dim=0)[rank]

    # Injected vectors (soft prompts, SiFT's noise) enter through this hook only; see ``embedding_hook``.
    _embedding_hook = None

    @contextmanager
    def embedding_hook(self, hook):
        """Within the block, the embedding passes the word vectors through ``hook(vectors, tokens) -> vectors``
        ([s, b, H] replicated, before LayerNorm, mask and dropout). The result may be longer than ``tokens``
        (prompts inserted): the ``padding_mask`` given to forward describes the result."""
        previous, self._embedding_hook = self._embedding_hook, hook
        try:
            yield
        finally:
            self._embedding_hook = previous

    def embed(self, tokens, input_mask):
        """tokens [b, s] -> LN(word embeddings, through the embedding hook if one is set) * mask, dropped out:
        [s(/tp), b, H]; input_mask [s(/tp), b, 1]."""
        vectors = self.word_embeddings(tokens).transpose(0, 1).contiguous()
        if self._embedding_hook is not None:
            vectors = self._embedding_hook(vectors, tokens)
        if self.sequence_parallel:
            vectors = tensor_parallel.scatter_to_sequence_parallel_region(vectors)
        emb = self.embedding_layernorm(vectors.to(input_mask.dtype)) * input_mask
        return hidden_dropout(emb, self.cfg.hidden_dropout, self.training, self.sequence_parallel)

    def input_mask(self, padding_mask):
        """[b, s] padding mask -> this rank's [s(/tp), b, 1] multiplicative mask in the model's dtype."""
        return self._local_sequence(padding_mask.t().unsqueeze(-1).to(self.rel_embeddings.weight.dtype))

    def forward(self, tokens, attention: AttentionInputs, lm_positions=None):
        """tokens: [b, s]; ``attention``: the batch's AttentionInputs (padding, masks, positions, deep-prompt prefix
        for this chunk's layers). Returns fp32 vocab-parallel MLM logits on the last stage ([s, b, V/tp], or
        [n, V/tp] at the flat (s-major) ``lm_positions``), else this chunk's hidden states [s(/tp), b, H]."""
        input_mask = self.input_mask(attention.padding_mask)
        if self.pre_process:
            hidden = self.embed(tokens, input_mask)
        else:
            hidden = self.input_tensor
        hidden = self.encode(hidden, attention, input_mask)
        if not self.post_process:
            return hidden
        return self.mlm_logits(hidden, lm_positions) if self.has_mlm_head else hidden

    def encode(self, hidden, attention: AttentionInputs, input_mask):
        """The layers of this chunk on [s(/tp), b, H]; the attention tensors are expanded once, for all of them."""
        cfg = self.cfg
        rel_index = attention.relative_index(cfg.position_buckets, cfg.max_relative, cfg.attention_span)
        mask_bias = attention.mask_bias(hidden.dtype)
        prefix = attention.prefix
        rel = self.rel_embeddings.weight
        if self.rel_layernorm is not None:
            rel = self.rel_layernorm(rel)
        embedding_out = hidden
        for i, layer in enumerate(self.layers):
            if self.recompute == "full" and self.training:
                hidden = tensor_parallel.checkpoint(partial(_layer_call, layer), False, hidden, rel, rel_index,
                                                    mask_bias, *((None, None) if prefix is None else prefix[i]))
            else:
                hidden = layer(hidden, rel, rel_index, mask_bias, None if prefix is None else prefix[i])
            if i == 0 and self.conv is not None:
                hidden = self.conv(embedding_out, hidden, input_mask)
        return hidden

    def mlm_logits(self, hidden, lm_positions=None):
        # The head runs replicated on TP ranks after the gather, and copy_to_tensor_model_parallel_region already
        # completes its input grad, so the gather's backward only splits (no reduce-scatter).
        if self.sequence_parallel:
            hidden = tensor_parallel.gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=False)
        s, b, h = hidden.shape
        weight = self.shared_embedding_or_output_weight()
        if lm_positions is None:
            return self.lm_head(hidden.reshape(s * b, h), weight).view(s, b, -1)
        return self.lm_head(hidden.reshape(s * b, h).index_select(0, lm_positions), weight)
