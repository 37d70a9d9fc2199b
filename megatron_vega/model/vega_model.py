"""The Vega encoder: embeddings -> post-LN disentangled-attention layers -> the heads it was built with (none, or
the objective's: model/heads.py), one pipeline chunk of it.

Activations are [sequence, batch, hidden] (Megatron's layout, needed for sequence parallelism and the pipeline
schedules). A chunk owns layers [first, last); the first chunk owns the embeddings and the nGiE conv, the last
the heads. Every chunk owns a copy of the relative-embedding table (all layers use it); its grads are summed
across pipeline stages by megatron-core (params tagged ``pipeline_parallel``, config ``has_cond_embedder``).
Copies that exist on more than one chunk (the relative table and its LayerNorm, the last stage's tied output
weight) are tagged ``shared`` except on the first chunk, so megatron-core's grad norm counts each once.
"""
from contextlib import contextmanager
from functools import partial

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.transformer.enums import ModelType
from megatron.core.transformer.module import MegatronModule

from megatron_vega.config import ModelConfig
from megatron_vega.model.attention_inputs import AttentionInputs
from megatron_vega.model.layer import ConvLayer, VegaLayer, hidden_dropout
from megatron_vega.ops.kernels import layer_norm


def init_normal(std: float):
    return lambda w: torch.nn.init.normal_(w, mean=0.0, std=std)


def _layer_call(layer, hidden, rel, rel_index, mask_bias, prefix_key, prefix_value):
    """A layer call with the prefix as two tensors: the recompute checkpoint saves tensors, not tuples."""
    return layer(hidden, rel, rel_index, mask_bias, None if prefix_key is None else (prefix_key, prefix_value))


class VegaModel(MegatronModule):
    def __init__(self, cfg: ModelConfig, mp_config, layers: tuple[int, int] | None = None,
                 pre_process: bool = True, post_process: bool = True, heads=(), name: str = ""):
        super().__init__(config=mp_config)
        self.model_type = ModelType.encoder_or_decoder  # read by megatron-core's schedules
        self.cfg = cfg
        # The model's name in its parameters' global names (model/weights.py): "" for the main model, "generator"
        # for a second model an objective owns.
        self.name = name
        self.pre_process, self.post_process = pre_process, post_process
        self.sequence_parallel = mp_config.sequence_parallel
        # True on every stage when a head reads the word embeddings (megatron-core all-reduces the tied weight's
        # grads between first and last stage only where this is set); head_names: the heads this chunk computes.
        ties = any(spec.ties_word_embeddings for spec in heads)
        self.share_embeddings_and_output_weights = ties
        self.head_names = tuple(spec.name for spec in heads) if post_process else ()
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
            self.word_embeddings.weight.shared_embedding = cross_stage and ties
            self.embedding_layernorm = layer_norm(cfg.hidden_size, cfg.layernorm_epsilon, self.sequence_parallel)
            # GLM's intra-span positions (docs/glm_and_cloze.md): a small replicated table, added to the word vectors
            self.block_position_embeddings = (torch.nn.Embedding(cfg.block_position_embeddings, cfg.hidden_size)
                                              if cfg.block_position_embeddings > 0 else None)
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
        if post_process:
            for spec in heads:
                self.add_module(spec.name, spec.build(cfg, mp_config))
            if ties and not pre_process:  # last stage: a copy of the word embeddings, synced with the first stage
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
        return self.output_weight if self.head_names and self.share_embeddings_and_output_weights else None

    # -- forward --------------------------------------------------------------------------------------------
    def _local_sequence(self, x):
        """The rank's sequence chunk of a replicated [s, b, ...] tensor under sequence parallelism."""
        if not self.sequence_parallel:
            return x
        tp = parallel_state.get_tensor_model_parallel_world_size()
        rank = parallel_state.get_tensor_model_parallel_rank()
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

    def embed(self, tokens, input_mask, block_position_ids=None):
        """tokens [b, s] -> LN(word embeddings (+ GLM's block-position rows), through the embedding hook if one is
        set) * mask, dropped out: [s(/tp), b, H]; input_mask [s(/tp), b, 1]."""
        vectors = self.word_embeddings(tokens)
        if self.block_position_embeddings is not None and block_position_ids is not None:
            vectors = vectors + self.block_position_embeddings(block_position_ids.long()).to(vectors.dtype)
        vectors = vectors.transpose(0, 1).contiguous()
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
            hidden = self.embed(tokens, input_mask, attention.block_position_ids)
        else:
            hidden = self.input_tensor
        hidden = self.encode(hidden, attention, input_mask)
        if not self.post_process:
            return hidden
        return self.heads_output(hidden, lm_positions=lm_positions)

    def encode(self, hidden, attention: AttentionInputs, input_mask):
        """The layers of this chunk on [s(/tp), b, H]; the attention tensors are expanded once, for all of them."""
        cfg = self.cfg
        rel_index = attention.relative_index(cfg.position_buckets, cfg.max_relative, cfg.attention_span,
                                             cfg.block_positions_relative)
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
                hidden = self.conv(embedding_out, hidden, input_mask, attention.convolution_mask())
        return hidden

    def heads_output(self, hidden, **head_inputs):
        """The last stage's result: the hidden states [s(/tp), b, H] without heads, the one head's output (the MLM
        head: fp32 vocab-parallel logits [s, b, V/tp], or [n, V/tp] at the flat s-major ``lm_positions``), or
        {name: output} for several heads."""
        outputs = {name: getattr(self, name)(hidden, self, **head_inputs) for name in self.head_names}
        if not outputs:
            return hidden
        return next(iter(outputs.values())) if len(outputs) == 1 else outputs
