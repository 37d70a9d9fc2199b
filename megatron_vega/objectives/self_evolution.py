"""Self-evolution stage 2 (docs/self_evolution.md): train on the positions mined by stage 1 (selfevolution/stage1.py)
against smoothed labels ỹ = (1-α)·onehot + α·r, where r is the model's own prediction on the ORIGINAL (unmasked)
block.

Each step first runs a forward-only pass of the pipeline over the original blocks (eval mode, no grad) and keeps
the reference logits of the last stage, micro-batch by micro-batch; the training pass then pops them in the
same order. The loss is the fused vocab-parallel soft-target cross-entropy: ỹ is never materialised and only
max / sum-exp / scalar partials cross tensor-parallel ranks. Under ``--fused-loss`` (objectives/fused_loss.py) the
reference pass keeps the head's features [n, H] instead of logits [n, V/tp] and the loss projects both chunk by
chunk, so neither model's logits of all masked tokens exist. Validation stays the MLM loss (random masking).
"""
from collections import deque
from dataclasses import dataclass
from functools import partial

import torch
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

from megatron_vega.cli import option
from megatron_vega.errors import VegaInputError
from megatron_vega.model.heads import LMFeatures
from megatron_vega.objectives.base import model_output
from megatron_vega.objectives.fused_loss import emit_features, fused_soft_target_loss
from megatron_vega.objectives.losses import predicted_labels
from megatron_vega.objectives.mlm import MaskedLM, MaskedLMConfig
from megatron_vega.objectives.registry import register_objective
from megatron_vega.ops.smoothed_cross_entropy import smoothed_vocab_parallel_cross_entropy
from megatron_vega.training.flops import train_flops_per_token


@dataclass
class SelfEvolutionConfig(MaskedLMConfig):
    neglected_tokens: str | None = option(None, "Stage-1 index (tools/self_questioning.py --output) of the "
                                                "positions to mask per block.")
    se_alpha: float = option(0.5, "α of ỹ = (1-α)·onehot + α·r (0.5: the Vega v2 report; 0.1: the SE4PLMs code).")
    se_normalization: str = option("masked", "Divide the summed loss by the masked tokens (default) or by all "
                                             "non-padding tokens (the SE4PLMs code).", choices=["masked", "all"])
    se_reference: str = option("current", "r from the current model (the SE4PLMs code) or a frozen copy of the "
                                          "starting checkpoint.", choices=["current", "frozen"])
    se_uniform_smoothing: bool = option(False, "Ablation: r uniform over the vocabulary (vanilla label smoothing).")


class SelfEvolution(MaskedLM):
    config_class = SelfEvolutionConfig

    def __init__(self, run):
        super().__init__(run)
        self.vocab_size = run.model.vocab_size
        self.reference_chunks = None  # frozen copy, or None for the current model
        self.references: deque = deque()

    def datasets(self, vocab):
        from megatron_vega.data.mlm_dataset import build_mlm_datasets
        from megatron_vega.selfevolution.neglected_index import NeglectedIndex
        se = self.cfg
        if not se.neglected_tokens:
            raise VegaInputError("--neglected-tokens", "required with --objective self-evolution (stage-1 output)")
        if se.se_reference == "frozen" and not self.run.checkpoint.load:
            raise VegaInputError("--se-reference", "'frozen' needs --load (the stage-1 checkpoint to keep frozen)")
        index = NeglectedIndex(se.neglected_tokens)
        train, valid, _ = build_mlm_datasets(self.run.data, vocab, self.run.train.seed, mask_override=index)
        return train, valid

    def attach(self, trainer) -> None:
        if self.cfg.se_reference == "frozen":
            self.reference_chunks = frozen_reference(trainer, self.run.checkpoint.load)
            if self.uses_fused_loss():
                emit_features(self.reference_chunks)

    def flops_per_token(self) -> float:
        """MLM's plus one no-grad reference forward (its head runs at the predicted positions only, as training's)."""
        run = self.run
        return train_flops_per_token(run.model, run.data.seq_length, run.data.mask_prob,
                                     not self.cfg.se_uniform_smoothing, run.train.micro_batch_size)

    # -- the reference pass ------------------------------------------------------------------------------------
    def _reference_step(self, data_iterator, model):
        batch = next(data_iterator)
        return model_output(model, batch, tokens_key="labels"), self._keep_reference

    def _keep_reference(self, output):
        """Keeps the reference logits, or under --fused-loss the head's features."""
        kept = output.hidden if isinstance(output, LMFeatures) else output
        self.references.append(kept.detach())
        return kept.new_zeros(()), {}

    def before_step(self, trainer, dataset) -> None:
        """Fill the queue of reference logits for this step's micro-batches (last pipeline stage)."""
        if self.cfg.se_uniform_smoothing:
            return
        self.references.clear()
        chunks = self.reference_chunks or trainer.model
        for m in chunks:
            m.eval()
        with torch.no_grad():
            trainer.run_schedule(dataset, trainer.consumed_samples, forward_only=True,
                                 forward_step=self._reference_step, model=chunks)
        for m in trainer.model:
            m.train()

    # -- the training pass -------------------------------------------------------------------------------------
    def forward_step(self, data_iterator, model):
        batch = next(data_iterator)
        return model_output(model, batch), partial(self._loss, batch)

    def _loss(self, batch, logits):
        target = predicted_labels(batch)
        reference = None if self.cfg.se_uniform_smoothing else self.references.popleft()
        count = target.numel() if self.cfg.se_normalization == "masked" else batch["padding_mask"].sum()
        if isinstance(logits, LMFeatures):
            loss, nll = fused_soft_target_loss(logits, reference, target, self.cfg.se_alpha, count)
            return loss, {"lm loss": nll, "se loss": loss.detach().clone()}
        losses = smoothed_vocab_parallel_cross_entropy(logits, reference, target, self.cfg.se_alpha,
                                                       vocab_size=self.vocab_size)
        loss = losses.sum() / max(count, 1)
        with torch.no_grad():  # plain NLL of the gold token, for monitoring (comparable with MLM runs)
            nll = vocab_parallel_cross_entropy(logits.detach().clone(), target).mean()
        return loss, {"lm loss": nll, "se loss": loss.detach().clone()}


def frozen_reference(trainer, load: str):
    """A second copy of the model chunks with the weights of checkpoint `load`, never trained."""
    from megatron_vega.model.build import build_model
    from megatron_vega.training import checkpointing
    chunks = build_model(trainer.run.model, trainer.tc)
    checkpointing.load(load, chunks, None, None, with_optimizer=False, with_rng=False)
    for p in (p for c in chunks for p in c.parameters()):
        p.requires_grad_(False)
    return chunks


register_objective("self-evolution", SelfEvolution)
