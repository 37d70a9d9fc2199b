"""MT-DNN multi-task fine-tuning pieces (docs/pdr_and_multitask.md): the model with one head per task and the
sampler that gives every global batch to one task.

The sampler needs no communication: the task of step k of epoch e is a function of (seed, e, k) only, computed the
same way on every data-parallel rank (and would be on every pipeline stage), so all ranks always run the same task
and the batch carries its task id to the model.
"""
import numpy as np
import torch
from megatron.core.transformer.module import MegatronModule

from megatron_vega import runtime
from megatron_vega.finetune.tasks import build_head
from megatron_vega.model.attention_inputs import AttentionInputs
from megatron_vega.model.build import build_model
from megatron_vega.model.heads import init_head
from megatron_vega.model.weights import init_weights


class MultitaskModel(MegatronModule):
    """One encoder and one head per task (each head whole: pooler, dropout, classifier); ``batch["task_id"]``
    (an index into ``tasks``) picks the head. Heads of the tasks not in a step get zero gradients."""

    def __init__(self, encoder, heads: dict):
        super().__init__(config=encoder.config)
        self.encoder, self.tasks = encoder, list(heads)
        self.heads = torch.nn.ModuleDict(heads)

    def forward(self, batch):
        hidden = self.encoder(batch["tokens"], AttentionInputs.from_batch(batch))
        return self.heads[self.tasks[int(batch["task_id"])]](hidden, batch).float()


def build_multitask_model(tasks: list[str], model_cfg, tc, cls_dropout: float, seed: int) -> MultitaskModel:
    """Seeded weights as ``task_model.build_task_model``; head i is seeded with seed + i so heads differ."""
    [encoder] = build_model(model_cfg, tc, heads=())
    init_weights([encoder], seed)
    heads = {}
    for i, task in enumerate(tasks):
        head = build_head(task, model_cfg.hidden_size, cls_dropout)
        init_head(head, model_cfg.init_method_std, seed + i)
        heads[task] = head.to(device=runtime.device(), dtype=tc.params_dtype)
    return MultitaskModel(encoder, heads)


def batches_per_epoch(sizes: list[int], global_batch: int) -> list[int]:
    """Global batches a task's training units fill (the last one wraps around, as single-task training)."""
    return [-(-n // global_batch) for n in sizes]


def task_schedule(batches: list[int], temperature: float, seed: int, epoch: int) -> np.ndarray:
    """The task index of every step of ``epoch``: Σ batches steps.

    T = 1 is MT-DNN's default: each task index repeated (its number of batches) times, shuffled, so every batch
    is seen once per epoch. Otherwise each step draws a task independently with P(t) ∝ batches_t^(1/T) (T > 1
    flattens towards uniform, T < 1 sharpens towards the largest task)."""
    rng = np.random.default_rng([seed, epoch, 0x6d74])  # its own stream: data orders use (seed, epoch, task)
    if temperature == 1.0:
        return rng.permutation(np.repeat(np.arange(len(batches)), batches))
    weights = np.asarray(batches, dtype=np.float64) ** (1.0 / temperature)
    return rng.choice(len(batches), size=sum(batches), p=weights / weights.sum())


class TaskStream:
    """One task's training samples as an endless sequence of global batches: a fresh permutation (from seed, task
    and pass) each time the samples run out, so a task sampled more than its share wraps into a new pass."""

    def __init__(self, size: int, global_batch: int, seed: int, task_index: int):
        self.size, self.global_batch, self.seed, self.task_index = size, global_batch, seed, task_index
        self.passes, self.order = 0, np.zeros(0, dtype=np.int64)

    def next_batch(self) -> np.ndarray:
        """Indices of the next global batch (same on every rank)."""
        while len(self.order) < self.global_batch:
            self.passes += 1
            fresh = np.random.default_rng([self.seed, self.passes, self.task_index]).permutation(self.size)
            self.order = np.concatenate([self.order, fresh])
        batch, self.order = self.order[:self.global_batch], self.order[self.global_batch:]
        return batch
