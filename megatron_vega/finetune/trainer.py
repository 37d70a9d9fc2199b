"""The fine-tuning loop: encoder + head in megatron-core DDP, pretraining's Adam and learning-rate schedule
(``training/optimizer.py``: weight decay, clipping, linear warm-up and decay), epochs over rank-sliced batches, dev
evaluation after every epoch and the best-dev weights kept in memory.

Tensor parallelism lives in the model; data parallelism is DDP plus the Megatron sampler layout (each global
batch cut into micro-batches, rank r reading the r-th slice of each). Pipeline parallelism is not supported:
SiFT's nested backward does not fit megatron-core's pipeline schedules, so the loop calls forward/backward itself.

Formats that are not a task head (UniMC, finetune/unimc.py) subclass Finetuner and override its hooks: ``batch``
(samples -> device batch), ``loss`` (batch -> loss and three logged parts), ``log_parts`` (how the second and third
parts are named in the log) and ``predict_rows`` (one forward's output -> a score array per sample); the optimizer,
schedule, accumulation, DP layout, epochs and best-dev selection stay here.
"""
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads

from megatron_vega import runtime
from megatron_vega.data.sampler import check_batch_sizes, rank_microbatch_indices
from megatron_vega.finetune.features import Sample, collate
from megatron_vega.finetune.pdr import pdr_term
from megatron_vega.finetune.prompt_tuning import teacher_logits
from megatron_vega.finetune.sift import normalize, sift_forward
from megatron_vega.finetune.task_model import TaskModel
from megatron_vega.prompt.panda import panda_loss
from megatron_vega.training.optimizer import lr_scheduler, megatron_optimizer


def print_rank0(*args) -> None:
    if dist.get_rank() == 0:
        print(*args, flush=True)


@dataclass
class Result:
    score: float
    metrics: dict
    epoch: int
    weights: dict  # this rank's parameters at that epoch
    steps: int


class Finetuner:
    def __init__(self, model: TaskModel, optim, sift, pad_id: int, teacher: TaskModel | None = None, panda=None,
                 panda_lambda: float = 0.0, pdr=None, collate_fn=collate):
        """``teacher``/``panda``/``panda_lambda``: PANDA's frozen teacher, its PandaConfig and lambda; ``pdr``: a
        PdrConfig (finetune/pdr.py); ``collate_fn``: samples -> batch (the cloze format's own)."""
        self.model, self.optim, self.sift, self.pad_id, self.pdr = model, optim, sift, pad_id, pdr
        self.collate = collate_fn
        self.teacher, self.panda, self.panda_lambda = teacher, panda, panda_lambda
        self.ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(grad_reduce_in_fp32=True),
                                           model)
        self.dp = parallel_state.get_data_parallel_world_size()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.global_batch = optim.global_batch_size or optim.micro_batch_size * self.dp
        check_batch_sizes(self.global_batch, optim.micro_batch_size, self.dp)

    # -- weights ------------------------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """This rank's trainable parameters (a frozen backbone never changes, so it is not copied)."""
        return {name: p.detach().clone() for name, p in self.model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def restore(self, weights: dict) -> None:
        for name, p in self.model.named_parameters():
            if name in weights:
                p.copy_(weights[name])

    # -- loss -----------------------------------------------------------------------------------------------------
    def loss(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Task cross-entropy (+ λ · SiFT adversarial loss, or + PANDA's KD term) + α · PDR term; also returns the
        detached (task, adversarial or KD, PDR) triple."""
        zero = torch.zeros(())
        if self.teacher is not None:
            target = teacher_logits(self.teacher, batch, self.panda.panda_teacher_mode)
            loss, task, kd = panda_loss(self.ddp(batch), target, batch["labels"], self.panda, self.panda_lambda)
            return loss, torch.stack([task.detach(), kd.detach(), zero])
        encoder = self.model.encoder

        def logits_fn(hook):
            with encoder.embedding_hook(hook):
                return self.ddp(batch)

        logits, adv = sift_forward(logits_fn, self.sift) if self.sift.sift else (self.ddp(batch), zero)
        loss = task = F.cross_entropy(logits, batch["labels"])
        if self.sift.sift:
            loss = loss + self.sift.sift_lambda * adv
        pdr = zero
        if self.pdr is not None and self.pdr.pdr:  # with SiFT, the noise goes on SiFT's normalized vectors
            pdr = pdr_term(logits_fn, logits, self.pdr, (lambda words, tokens: normalize(words)) if self.sift.sift
                           else None)
            loss = loss + self.pdr.pdr_alpha * pdr
        return loss, torch.stack([task.detach(), adv.detach(), pdr.detach()])

    def _device(self, batch: dict, extra: dict | None = None) -> dict:
        """The batch on the device, with ``extra`` entries (multi-task: the batch's task id) added."""
        return {k: v.to(runtime.device()) for k, v in {**batch, **(extra or {})}.items()}

    # -- hooks a format overrides ---------------------------------------------------------------------------------
    def batch(self, samples: list, training: bool, extra: dict | None = None) -> dict:
        """One micro-batch on the device (``training``: a format may draw training-only noise, e.g. masking)."""
        return self._device(self.collate(samples, self.pad_id), extra)

    def predict_rows(self, samples: list, batch: dict) -> list[np.ndarray]:
        """The model's output on ``batch`` split into one array per sample (here: its logit rows)."""
        logits = self.ddp(batch).cpu().numpy()
        return np.split(logits, np.cumsum([len(s.rows) for s in samples])[:-1])

    def log_parts(self, second: float, third: float) -> str:
        """The log's text for the second and third loss parts ``loss`` returns."""
        return ((f" | adv loss {second:.4f}" if self.sift.sift else "")
                + (f" | kd loss {second:.4f}" if self.teacher is not None else "")
                + (f" | pdr loss {third:.6g}" if self.pdr is not None and self.pdr.pdr else ""))

    # -- training -------------------------------------------------------------------------------------------------
    def _optimizer_and_schedule(self, total_steps: int):
        """Pretraining's Adam and schedule: linear warm-up over --lr-warmup-fraction of the steps, linear decay."""
        o = self.optim
        optimizer = megatron_optimizer(o, [self.ddp],
                                       config_overrides=getattr(self.model, "optimizer_overrides", None))
        scheduler = lr_scheduler(optimizer, o, train_steps=total_steps, decay_steps=total_steps,
                                 warmup_steps=int(o.lr_warmup_fraction * total_steps))
        return optimizer, scheduler

    def _step(self, optimizer, scheduler, micro_batches: list[list[Sample]], extra: dict | None = None):
        self.ddp.zero_grad_buffer()
        optimizer.zero_grad()
        parts = torch.zeros(3)
        for samples in micro_batches:
            loss, pair = self.loss(self.batch(samples, training=True, extra=extra))
            (loss / len(micro_batches)).backward()
            parts += pair.cpu() / len(micro_batches)
        finalize_model_grads([self.ddp])
        updated, grad_norm, _ = optimizer.step()
        if updated:
            scheduler.step(increment=1)
        return parts, grad_norm

    def train(self, samples: list[Sample], evaluate: Callable[[], tuple[float, dict]], tag: str) -> Result:
        """``--epochs`` over ``samples`` from the current weights, ``evaluate`` (-> selection score, metrics)
        after each epoch; returns the best epoch's result (ties keep the earlier epoch)."""
        o = self.optim
        steps_per_epoch = -(-len(samples) // self.global_batch)
        total = steps_per_epoch * o.epochs
        optimizer, scheduler = self._optimizer_and_schedule(total)
        best, step, logged = None, 0, torch.zeros(3)
        self.ddp.train()
        for epoch in range(1, o.epochs + 1):
            # Same permutation on every rank; the last batch wraps around instead of dropping samples.
            order = np.resize(np.random.default_rng(o.seed + epoch).permutation(len(samples)),
                              steps_per_epoch * self.global_batch)
            for s in range(steps_per_epoch):
                micro = rank_microbatch_indices(s * self.global_batch, self.global_batch, o.micro_batch_size,
                                                self.dp_rank, self.dp)
                parts, grad_norm = self._step(optimizer, scheduler,
                                              [[samples[order[i]] for i in m] for m in micro])
                step += 1
                logged += parts
                if step % o.log_interval == 0 or step == total:
                    n = (step - 1) % o.log_interval + 1
                    dist.all_reduce(logged, group=parallel_state.get_data_parallel_group())
                    task, second, third = (logged / (n * self.dp)).tolist()
                    print_rank0(f"{tag} epoch {epoch} step {step}/{total} | lr {optimizer.param_groups[0]['lr']:.3e}"
                                f" | loss {task:.6f}" + self.log_parts(second, third)
                                + (f" | grad norm {grad_norm:.3f}" if grad_norm is not None else ""))
                    logged.zero_()
            score, metrics = evaluate()
            better = best is None or score > best.score
            if better:
                best = Result(score, metrics, epoch, self.snapshot(), step)
            print_rank0(f"{tag} epoch {epoch} dev " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                        + (" (best)" if better else ""))
        return best

    # -- inference ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, samples: list[Sample], extra: dict | None = None) -> list[np.ndarray]:
        """``predict_rows`` of every sample (logit rows [rows, classes] each), computed DP-sharded and gathered on
        all ranks; ``extra`` as in ``_device``."""
        self.ddp.eval()
        local = samples[self.dp_rank::self.dp]
        out = []
        for i in range(0, len(local), self.optim.micro_batch_size):
            chunk = local[i:i + self.optim.micro_batch_size]
            out += self.predict_rows(chunk, self.batch(chunk, training=False, extra=extra))
        self.ddp.train()
        if self.dp == 1:
            return out
        parts = [None] * self.dp
        dist.all_gather_object(parts, out, group=parallel_state.get_data_parallel_group())
        return [parts[i % self.dp][i // self.dp] for i in range(len(samples))]
