"""The main model's COCO-LM heads (docs/coco_lm.md, "Architecture"), attached to its last chunk like the MLM head.

- copy head: Linear(H -> 1) on every token, replicated on TP ranks: [s, b] logits of "the token is original";
- corrective LM head, ``--clm-head projection`` (COCO-LM's): logits E·h + b at the predicted positions, tied to the
  vocab-parallel word embeddings, with its own vocab-parallel bias and no dense/GELU/LayerNorm transform
  (``--clm-head mlm`` uses the MLM head instead: model/heads.py);
- SCL head: Linear(H -> d) -> GELU -> LayerNorm on [CLS], replicated.

Replicated heads see the whole sequence (gathered under sequence parallelism), so their grads are identical on the
TP ranks and megatron-core counts them once in the grad norm.
"""
import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region

from megatron_vega import runtime
from megatron_vega.model.heads import PADDED_VOCAB_LOGIT, HeadSpec, sequence_gathered
from megatron_vega.ops.kernels import layer_norm


class CopyHead(torch.nn.Module):
    def __init__(self, hidden: int, sequence_parallel: bool):
        super().__init__()
        self.sequence_parallel = sequence_parallel
        self.dense = torch.nn.Linear(hidden, 1)

    def forward(self, hidden, model, lm_positions=None):
        """[s(/tp), b, H] -> [s, b] fp32 logits of p_copy (the token is the original)."""
        return self.dense(sequence_gathered(hidden, self.sequence_parallel)).squeeze(-1).float()


class CorrectiveLMHead(torch.nn.Module):
    """E·h + b over this rank's vocabulary shard at the predicted positions."""

    def __init__(self, padded_vocab_size: int, vocab_size: int, tp_size: int, sequence_parallel: bool):
        super().__init__()
        self.sequence_parallel = sequence_parallel
        per_rank = padded_vocab_size // tp_size
        self.bias = torch.nn.Parameter(torch.zeros(per_rank))
        tensor_parallel.set_tensor_model_parallel_attributes(self.bias, True, 0, 1)
        start = parallel_state.get_tensor_model_parallel_rank() * per_rank
        real = torch.arange(start, start + per_rank) < vocab_size
        self.register_buffer("vocab_pad", torch.where(real, 0.0, PADDED_VOCAB_LOGIT), persistent=False)

    def forward(self, hidden, model, lm_positions=None):
        hidden = sequence_gathered(hidden, self.sequence_parallel)
        s, b, h = hidden.shape
        flat = hidden.reshape(s * b, h)
        if lm_positions is not None:
            flat = flat.index_select(0, lm_positions)
        weight = model.shared_embedding_or_output_weight()
        logits = runtime.linear_in_fp32(copy_to_tensor_model_parallel_region(flat), weight) + self.bias
        logits = logits.float() + self.vocab_pad
        return logits if lm_positions is not None else logits.view(s, b, -1)


class SequenceContrastHead(torch.nn.Module):
    def __init__(self, hidden: int, dim: int, eps: float, sequence_parallel: bool):
        super().__init__()
        self.sequence_parallel = sequence_parallel
        self.dense = torch.nn.Linear(hidden, dim)
        self.layernorm = layer_norm(dim, eps)

    def forward(self, hidden, model, lm_positions=None):
        """[s(/tp), b, H] -> [b, d]: the [CLS] (position 0) state projected."""
        cls = sequence_gathered(hidden, self.sequence_parallel)[0]
        return self.layernorm(F.gelu(self.dense(cls)))


COPY_HEAD = HeadSpec("copy_head", lambda cfg, tc: CopyHead(cfg.hidden_size, tc.sequence_parallel))
CLM_HEAD = HeadSpec("clm_head", lambda cfg, tc: CorrectiveLMHead(cfg.padded_vocab_size, cfg.vocab_size,
                                                                 tc.tensor_model_parallel_size, tc.sequence_parallel),
                    ties_word_embeddings=True)


def scl_head(dim: int) -> HeadSpec:
    return HeadSpec("scl_head", lambda cfg, tc: SequenceContrastHead(cfg.hidden_size, dim, cfg.layernorm_epsilon,
                                                                     tc.sequence_parallel))


class SharedWordEmbeddings(torch.nn.Module):
    """A model's word embeddings that are another model's (``--embedding-sharing plain``): the lookup and the
    ``weight`` (read by a tied head) are the owner's, and this module holds no parameter, so the owner's table is
    built, optimised and checkpointed once, under the owner's name. Gradients from the borrower's loss add into
    the owner's gradient buffer before the owner's reduction (docs/coco_lm.md, "Embedding sharing")."""

    def __init__(self, owner: torch.nn.Module):
        super().__init__()
        object.__setattr__(self, "owner", owner)  # not a submodule: its parameter must not be registered twice

    @property
    def weight(self):
        return self.owner.weight

    def forward(self, tokens):
        return self.owner(tokens)


class DisentangledWordEmbeddings(torch.nn.Module):
    """The main model's word embeddings under ``--embedding-sharing gdes`` (DeBERTa-v3's gradient-disentangled
    sharing): sg(E) + E_Δ, with E the generator's table (``source``, set once the generator is built; not a
    submodule, so the main model neither owns nor checkpoints it) and E_Δ its own zero-initialised table
    (``delta``, a vocab-parallel embedding: ``word_embeddings.delta.weight``). The main model's losses train E_Δ
    only, the generator's MLM loss trains E only (docs/coco_lm.md, "Embedding sharing")."""

    def __init__(self, delta: torch.nn.Module):
        super().__init__()
        self.delta = delta
        self.source = None

    def set_source(self, source: torch.nn.Module) -> None:
        object.__setattr__(self, "source", source)

    @property
    def weight(self):
        """The table a tied head reads: sg(E) + E_Δ (vocab-parallel shard)."""
        return self.source.weight.detach() + self.delta.weight

    def forward(self, tokens):
        # a lookup is linear in the table: the rows of sg(E) + E_Δ without materialising the sum
        with torch.no_grad():
            shared = self.source(tokens)
        return shared + self.delta(tokens)
