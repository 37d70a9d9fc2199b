"""A toy objective registered from outside the package (issue 16, check 2): MLM on the encoder plus a small
generator, a second model with its own head and loss. The generator (``--generator-num-layers``,
``--generator-hidden-size``; its parameters named ``generator.*``) reads the masked tokens and predicts, per
token, whether the position is masked (a replaced-token-detection-like binary head). Combined loss
L = L_mlm + λ·L_gen, λ = ``--toy-generator-weight``: the two models have disjoint parameters, so one schedule per
model, gradients summed in their buffers, one optimizer step trains L exactly (objectives/base.py)."""
from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F

from megatron_vega.cli import option
from megatron_vega.model.heads import HeadSpec, sequence_gathered
from megatron_vega.objectives.base import MAIN, ModelSpec, model_output
from megatron_vega.objectives.mlm import MaskedLM
from megatron_vega.objectives.registry import register_objective
from megatron_vega.training.arguments import ObjectiveSettings

GENERATOR = "generator"


@dataclass
class ToyConfig(ObjectiveSettings):
    generator_num_layers: int = option(2, "Layers of the toy generator (split over the pipeline like the encoder).")
    generator_hidden_size: int = option(32, "Hidden size of the toy generator.")
    toy_generator_weight: float = option(0.5, "λ of L = L_mlm + λ·L_generator.")


class MaskedPositionHead(torch.nn.Module):
    """Per token: is this position masked? [s, b, H] -> [s, b, 2] logits (replicated on TP ranks)."""

    def __init__(self, hidden: int, sequence_parallel: bool):
        super().__init__()
        self.sequence_parallel = sequence_parallel
        self.classifier = torch.nn.Linear(hidden, 2)

    def forward(self, hidden, model, lm_positions=None):
        return self.classifier(sequence_gathered(hidden, self.sequence_parallel)).float()


MASKED_POSITION_HEAD = HeadSpec("masked_position_head",
                                lambda cfg, tc: MaskedPositionHead(cfg.hidden_size, tc.sequence_parallel))


def generator_loss(weight: float, batch, logits):
    """λ · mean cross-entropy of the masked/unmasked label over the non-padding tokens."""
    target = batch["loss_mask"].t().reshape(-1)  # [s*b], s-major like the logits
    keep = batch["padding_mask"].t().reshape(-1).bool()
    loss = F.cross_entropy(logits.reshape(-1, 2)[keep], target[keep])
    return weight * loss, {"generator loss": loss.detach().clone()}


class ToyObjective(MaskedLM):
    config_class = ToyConfig

    def models(self):
        cfg, h = self.cfg, self.cfg.generator_hidden_size
        generator = replace(self.run.model, num_layers=cfg.generator_num_layers, hidden_size=h,
                            num_attention_heads=2, kv_channels=h // 2, ffn_hidden_size=4 * h)
        return [ModelSpec(MAIN, self.run.model, self.heads()),
                ModelSpec(GENERATOR, generator, (MASKED_POSITION_HEAD,))]

    def generator_step(self, data_iterator, model):
        batch = next(data_iterator)
        return model_output(model, batch), partial(generator_loss, self.cfg.toy_generator_weight, batch)

    def training_pass(self, trainer, dataset):
        generator = trainer.run_schedule(dataset, trainer.consumed_samples, forward_only=False,
                                         forward_step=self.generator_step, model=trainer.models[GENERATOR])
        encoder = super().training_pass(trainer, dataset)
        return [{**e, **g} for e, g in zip(encoder, generator, strict=True)]

    def flops_per_token(self) -> float:
        return super().flops_per_token() * 1.1  # the small generator, roughly


register_objective("toy", ToyObjective)
