"""``finetune_superglue.py --multitask CB,RTE,COPA``: MT-DNN's first stage end to end (docs/pdr_and_multitask.md).

One encoder and one head per task are trained on single-task global batches, the task of each step drawn by
``multitask.task_schedule``; after every epoch every task is evaluated on its dev split and the epoch with the best
mean selection score (each task's metrics averaged, then the tasks averaged) is kept. ``--predict`` writes every
task's leaderboard file (RTE also AX-b / AX-g), ``--save`` a checkpoint whose heads are stored as
``heads.<Task>.<name>``; ``--load`` of it with ``--task T`` starts the second stage with T's head (``run.py``).
PDR and SiFT apply per step to the step's task (``Finetuner.loss`` is task-agnostic).
"""
import json
import time
from dataclasses import replace

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_vega.data.sampler import rank_microbatch_indices
from megatron_vega.errors import VegaInputError
from megatron_vega.finetune import checkpoint
from megatron_vega.finetune.features import TextEncoder, make_samples
from megatron_vega.finetune.multitask import TaskStream, batches_per_epoch, build_multitask_model, task_schedule
from megatron_vega.finetune.run import Run, load_weights, saved_extra, set_up
from megatron_vega.finetune.tasks import read_split, task_files
from megatron_vega.finetune.trainer import Finetuner, Result, print_rank0
from megatron_vega.superglue.readers import label_texts


class _OneHead:
    """The multi-task tuner's ``predict`` bound to one task's head."""

    def __init__(self, tuner, task_id: int):
        self.tuner, self.extra = tuner, {"task_id": torch.tensor(task_id)}

    def predict(self, samples):
        return self.tuner.predict(samples, self.extra)


class TaskView(Run):
    """One task of the multi-task model seen as a single-task ``Run``: Run's predict / evaluate_dev / write apply
    unchanged (they read only the splits, the text encoder, the sample cache and ``tuner.predict``), so the
    leaderboard files are written exactly as single-task fine-tuning writes them."""

    def __init__(self, run, encoder, tuner, task_id: int, splits: dict):  # not Run.__init__: the model is shared
        self.run, self.encoder, self.samples = run, encoder, {}
        self.make_samples = make_samples  # multi-task runs use task heads (--format head) only
        self.tuner = _OneHead(tuner, task_id)
        self.train, self.dev, self.test, self.extra_splits = (splits["train"], splits["dev"], splits["test"],
                                                              splits["extra"])


class MultitaskFinetuner(Finetuner):
    def train_tasks(self, samples: list[list], evaluate, tasks: list[str], temperature: float) -> tuple[Result, dict]:
        """``--epochs`` of Σ_t batches_t single-task steps; ``evaluate()`` -> (mean score, {task: metrics}) after
        each epoch; returns the best epoch (ties keep the earlier one) and the steps each task had got by then."""
        o, g = self.optim, self.global_batch
        batches = batches_per_epoch([len(s) for s in samples], g)
        total = sum(batches) * o.epochs
        optimizer, scheduler = self._optimizer_and_schedule(total)
        streams = [TaskStream(len(s), g, o.seed, i) for i, s in enumerate(samples)]
        micro = rank_microbatch_indices(0, g, o.micro_batch_size, self.dp_rank, self.dp)  # positions in a batch
        best, best_counts, step, logged, counts = None, {}, 0, torch.zeros(3), [0] * len(tasks)
        self.ddp.train()
        for epoch in range(1, o.epochs + 1):
            for task_id in task_schedule(batches, temperature, o.seed, epoch):
                batch = streams[task_id].next_batch()
                parts, grad_norm = self._step(optimizer, scheduler,
                                              [[samples[task_id][batch[i]] for i in m] for m in micro],
                                              {"task_id": torch.tensor(int(task_id))})
                step, logged = step + 1, logged + parts
                counts[task_id] += 1
                if step % o.log_interval == 0 or step == total:
                    n = (step - 1) % o.log_interval + 1
                    dist.all_reduce(logged, group=parallel_state.get_data_parallel_group())
                    task, adv, pdr = (logged / (n * self.dp)).tolist()
                    print_rank0(f"multitask epoch {epoch} step {step}/{total} | lr "
                                f"{optimizer.param_groups[0]['lr']:.3e} | loss {task:.6f}"
                                + (f" | adv loss {adv:.4f}" if self.sift.sift else "")
                                + (f" | pdr loss {pdr:.6g}" if self.pdr.pdr else "")
                                + (f" | grad norm {grad_norm:.3f}" if grad_norm is not None else "")
                                + " | steps " + " ".join(f"{t} {c}" for t, c in zip(tasks, counts)))
                    logged.zero_()
            score, metrics = evaluate()
            better = best is None or score > best.score
            if better:
                best, best_counts = Result(score, metrics, epoch, self.snapshot(), step), dict(zip(tasks, counts))
            print_rank0(f"multitask epoch {epoch} dev mean {score:.4f} | " + " | ".join(
                f"{t} " + " ".join(f"{k} {v:.4f}" for k, v in m.items()) for t, m in metrics.items())
                + (" (best)" if better else ""))
        return best, best_counts


class MultitaskRun:
    """A multi-task run: set up on construction (collective), executed by calling it."""

    def __init__(self, run):
        self.start, self.run, t, o = time.perf_counter(), run, run.task, run.optim
        self.tasks = run.multitask.tasks
        self.model_cfg, self.tokenizer, extra, tc = set_up(run)
        self.model = build_multitask_model(self.tasks, self.model_cfg, tc, o.cls_dropout, o.seed)
        if t.load:
            heads = load_weights(t.load, self.model, extra, dict(self.model.heads))
            print_rank0(f"loaded {t.load}: encoder" + "".join(f", {p.strip('.')}" for p in heads))
        self.tuner = MultitaskFinetuner(self.model, o, run.sift, self.tokenizer.pad_id, pdr=run.pdr)
        encoder = TextEncoder(self.tokenizer, o.seq_length)
        self.views = {task: TaskView(run, encoder, self.tuner, i, self._read(task))
                      for i, task in enumerate(self.tasks)}

    def _read(self, task: str) -> dict:
        t, o = self.run.task, self.run.optim
        cfg = replace(t, task=task)
        files = task_files(cfg, need_train=o.epochs > 0, need_test=bool(t.predict))

        def read(name, split_task, labelled):
            limit = t.max_train_examples if name == "train" else t.max_eval_examples
            return read_split(name, split_task, files[name], limit, t.copa_style, labelled)

        return {"train": read("train", task, True) if o.epochs else None,
                "dev": read("dev", task, True) if files["dev"] else None,
                "test": read("test", task, False) if t.predict else None,
                "extra": [read(ax, ax, False) for ax in ("AX-b", "AX-g") if files.get(ax)]}

    def evaluate(self) -> tuple[float, dict]:
        """Mean over tasks of each task's selection score, and every task's dev metrics."""
        scored = {task: view.evaluate_dev() for task, view in self.views.items()}
        return (sum(score for score, _ in scored.values()) / len(scored),
                {task: metrics for task, (_, metrics) in scored.items()})

    def fit(self) -> tuple[Result, dict]:
        samples = []
        for task, view in self.views.items():
            samples.append(make_samples(task, view.encoder, view.train.instances, training=True))
            if not samples[-1]:
                raise VegaInputError(view.train.path, "no training sample (ReCoRD: no answer mention fits a window)")
        return self.tuner.train_tasks(samples, self.evaluate, self.tasks, self.run.multitask.multitask_temperature)

    def __call__(self) -> dict:
        t = self.run.task
        summary = {"tasks": self.tasks}
        if self.run.optim.epochs:
            best, steps_per_task = self.fit()
            self.tuner.restore(best.weights)
            summary.update(dev=best.metrics, mean_dev=round(best.score, 6), epoch=best.epoch, steps=best.steps,
                           steps_per_task=steps_per_task)
        elif all(view.dev is not None for view in self.views.values()):
            score, summary["dev"] = self.evaluate()
            summary["mean_dev"] = round(score, 6)
        if t.predict:
            summary["predictions"] = [path for view in self.views.values() for path in view.write(t.predict)]
        if t.save:
            extra = saved_extra(self.run, self.model_cfg, self.tokenizer,
                                {"tasks": self.tasks, "dev": summary.get("dev"),
                                 "labels": {task: label_texts(task) for task in self.tasks}})
            heads = {f"heads.{task}.": head for task, head in self.model.heads.items()}
            summary["saved"] = str(checkpoint.save(t.save, summary.get("steps", 0), self.model, extra, heads))
        summary["seconds"] = round(time.perf_counter() - self.start, 1)
        print_rank0(json.dumps(summary))
        return summary


def finetune_multitask(run) -> dict:
    """Validate, build, train on every task, predict, save; returns the summary printed as the last line."""
    run.validate()
    return MultitaskRun(run)()
