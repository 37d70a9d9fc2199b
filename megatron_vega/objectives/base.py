"""The contract of a pretraining objective: what the trainer asks of it.

An objective is one module under ``objectives/`` (or a test's or user's module) holding an ``Objective`` subclass
registered with ``registry.register_objective(name, cls)``. The trainer (``training/trainer.py``) builds the
models the objective names, one optimizer over all of them, and calls the objective for batches, steps, FLOPs and
validation; the flags of ``config_class`` appear in their own group of ``pretrain_vega.py --help``
(``objectives/arguments.py``).

More than one model: ``models()`` may name a second model (for instance a small generator beside the encoder).
Its parameters' global names start with its name (``generator.layers.0...``), so checkpoints load at any
TP/PP/DP layout; its size flags are the objective's (``--generator-num-layers``). Pipeline story: every model is
split over the same pipeline stages by the same rule as the main one (``model.build.chunk_layer_ranges``; its layer
count must divide the same way) and runs its own megatron-core schedule, ``trainer.run_schedule(...,
model=trainer.models[name])``, inside ``training_pass``. Gradients of separate schedules add up in each model's
buffers before the one optimizer step: a combined loss L = L_a + L_b over disjoint parameters is trained exactly.
"""
from dataclasses import dataclass

import torch

from megatron_vega.config import ModelConfig
from megatron_vega.model.attention_inputs import AttentionInputs
from megatron_vega.model.heads import HeadSpec
from megatron_vega.training.arguments import ObjectiveSettings
from megatron_vega.training.batches import host_batch

MAIN = ""  # the main model's name: its parameters keep their bare global names


@dataclass(frozen=True)
class ModelSpec:
    """One model an objective trains: its name (the prefix of its global parameter names), size and heads."""
    name: str
    config: ModelConfig
    heads: tuple[HeadSpec, ...] = ()


def model_output(model, batch, tokens_key: str = "tokens"):
    """The one place objectives call a model (its inputs are the batch's)."""
    return model(batch[tokens_key], AttentionInputs.from_batch(batch), lm_positions=batch.get("lm_positions"))


class Objective:
    """Lifecycle: ``__init__(run)`` only reads the configuration (no files: a reshard builds the objective of a
    checkpoint whose data may be gone); ``datasets`` checks the objective's inputs and builds the data; the
    trainer is built from ``models()``; ``attach(trainer)`` follows (extra state such as a frozen reference)."""

    config_class: type = ObjectiveSettings  # its flags: a dataclass extending ObjectiveSettings

    def __init__(self, run):
        self.run = run
        self.cfg = run.objective

    # -- models --------------------------------------------------------------------------------------------
    def models(self) -> list[ModelSpec]:
        """The models to build, the main one first (named MAIN)."""
        return [ModelSpec(MAIN, self.run.model, self.heads())]

    def further_models(self) -> list[tuple[str, ModelConfig, bool]]:
        """The models after the main one as (name, config, whether it reads the main model's word table instead of
        owning one), for --dry-run's parameter and memory lines."""
        return [(spec.name, spec.config, False) for spec in self.models()[1:]]

    def heads(self) -> tuple[HeadSpec, ...]:
        """The main model's last-stage heads."""
        return ()

    def prepare_model(self, name: str, chunks: list, built: dict[str, list]) -> None:
        """Called as model ``name`` is built, before it is wrapped for data parallelism: ``chunks`` its unwrapped
        chunks, ``built`` the models built before it (name -> unwrapped chunks). A module tying one model to
        another's parameters goes in here (COCO-LM's generator reading the encoder's word embeddings)."""

    def fresh_if_missing(self, key: str, stored: set[str]) -> bool:
        """Whether a weights-only ``--load`` may leave tensor ``key`` (a global name) at its initial value when the
        checkpoint (holding the global names ``stored``) lacks it; default never (a mismatch is an error)."""
        return False

    def attach(self, trainer) -> None:
        """Called once the trainer holds the models (and the loaded checkpoint)."""

    # -- data ----------------------------------------------------------------------------------------------
    def datasets(self, vocab):
        """(train, validation) datasets; validation may be None."""
        raise NotImplementedError

    def host_batch(self, dataset, indices) -> dict[str, torch.Tensor]:
        """A micro-batch's host tensors from sample indices (read on TP rank 0 only, broadcast as int64);
        default: the masked-LM batch (training/batches.py)."""
        return host_batch(dataset, indices)

    # -- steps ---------------------------------------------------------------------------------------------
    def forward_step(self, data_iterator, model):
        """megatron-core forward_step_func: (data iterator, model chunk) -> (output, loss function)."""
        raise NotImplementedError

    def validation_step(self, data_iterator, model):
        """The forward step of validation; default the training one."""
        return self.forward_step(data_iterator, model)

    def before_step(self, trainer, dataset) -> None:
        """Ahead of each training step, before the gradients are zeroed (self-evolution's reference pass)."""

    def training_pass(self, trainer, dataset) -> list[dict]:
        """Forward and backward of one step over all micro-batches; returns the last stage's loss dicts. An
        objective with a second model runs that model's schedule here too."""
        return trainer.run_schedule(dataset, trainer.consumed_samples, forward_only=False,
                                    forward_step=self.forward_step)

    def validation_pass(self, trainer, dataset, consumed: int) -> list[dict]:
        """Validation metrics of one global batch (the trainer sets eval mode and no grad)."""
        return trainer.run_schedule(dataset, consumed, forward_only=True, forward_step=self.validation_step)

    # -- cost ----------------------------------------------------------------------------------------------
    def flops_per_token(self) -> float:
        """Model FLOPs per trained token, for MFU (training/flops.py's arithmetic)."""
        raise NotImplementedError
