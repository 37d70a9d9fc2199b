"""Masked language modelling (docs/objectives.md): cross-entropy of the gold token at the masked positions."""
from dataclasses import dataclass
from functools import partial

from megatron_vega.cli import option
from megatron_vega.model.heads import MLM_HEAD
from megatron_vega.objectives.base import MAIN, Objective, model_output
from megatron_vega.objectives.fused_loss import FUSED_LOSS_CHOICES, emit_features, fused_loss_enabled
from megatron_vega.objectives.losses import mlm_loss
from megatron_vega.objectives.registry import register_objective
from megatron_vega.training.arguments import ObjectiveSettings
from megatron_vega.training.flops import train_flops_per_token


def mlm_forward_step(data_iterator, model):
    """The MLM forward step (also the validation step of objectives whose metric is the MLM loss)."""
    batch = next(data_iterator)
    return model_output(model, batch), partial(mlm_loss, batch)


@dataclass
class MaskedLMConfig(ObjectiveSettings):
    fused_loss: str = option("auto", "Loss from the MLM head's features by the fused projection + cross entropy, "
                                     "no logits of all masked tokens (objectives/fused_loss.py); auto: on for "
                                     "vocabularies of 32768 ids or more.", choices=list(FUSED_LOSS_CHOICES))


class MaskedLM(Objective):
    config_class = MaskedLMConfig

    def heads(self):
        return (MLM_HEAD,)

    def uses_fused_loss(self) -> bool:
        return fused_loss_enabled(getattr(self.cfg, "fused_loss", "off"), self.run.model.vocab_size)

    def prepare_model(self, name, chunks, built) -> None:
        if name == MAIN and self.uses_fused_loss():
            emit_features(chunks)  # the losses (objectives/losses.py) take LMFeatures then

    def datasets(self, vocab):
        from megatron_vega.data.mlm_dataset import build_mlm_datasets
        train, valid, _ = build_mlm_datasets(self.run.data, vocab, self.run.train.seed)
        return train, valid

    def forward_step(self, data_iterator, model):
        return mlm_forward_step(data_iterator, model)

    def validation_step(self, data_iterator, model):
        """Validation MLM loss with random masking, whatever a subclass trains."""
        return mlm_forward_step(data_iterator, model)

    def flops_per_token(self) -> float:
        run = self.run
        return train_flops_per_token(run.model, run.data.seq_length, run.data.mask_prob,
                                     micro_batch_size=run.train.micro_batch_size)


register_objective("mlm", MaskedLM)
