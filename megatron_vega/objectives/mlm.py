"""Masked language modelling (docs/objectives.md): cross-entropy of the gold token at the masked positions."""
from functools import partial

from megatron_vega.model.heads import MLM_HEAD
from megatron_vega.objectives.base import Objective, model_output
from megatron_vega.objectives.losses import mlm_loss
from megatron_vega.objectives.registry import register_objective
from megatron_vega.training.flops import train_flops_per_token


def mlm_forward_step(data_iterator, model):
    """The MLM forward step (also the validation step of objectives whose metric is the MLM loss)."""
    batch = next(data_iterator)
    return model_output(model, batch), partial(mlm_loss, batch)


class MaskedLM(Objective):
    def heads(self):
        return (MLM_HEAD,)

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
