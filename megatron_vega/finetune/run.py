"""A fine-tuning run end to end: model and data from the config, training with best-dev selection, transductive
rounds, leaderboard files for the test split (and AX-b / AX-g with the RTE model), the saved model.

Transductive fine-tuning (docs/transductive_finetuning.md): round 0 fine-tunes on train; round r >= 1
labels the TEST split with the best-dev model of round r-1 (dev is never pseudo-labelled: it stays the unbiased
selector), keeps the predictions whose confidence reaches --transductive-threshold, and fine-tunes again from
the initial (pretrained) weights on train + those. It stops after --transductive-rounds, when the dev score did
not improve, or when fewer than --transductive-min-flip-rate of the test predictions changed. The best-dev
model over all rounds predicts the test split.
"""
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch.distributed as dist
from megatron.core.transformer import TransformerConfig

from megatron_vega import runtime
from megatron_vega.config import ModelConfig, ParallelConfig, inherited, model_preset
from megatron_vega.data.tokenizer import VegaTokenizer, check_vocab
from megatron_vega.errors import VegaInputError
from megatron_vega.finetune import checkpoint
from megatron_vega.finetune.features import TextEncoder, collate, instance_scores, make_samples
from megatron_vega.finetune.prompt_tuning import attach_prompt, build_teacher, trainable_parameters
from megatron_vega.finetune.task_model import build_task_model
from megatron_vega.finetune.tasks import flip_rate, pseudo_labelled, read_split, selection_score, task_files
from megatron_vega.finetune.trainer import Finetuner, print_rank0
from megatron_vega.model.build import transformer_config
from megatron_vega.prompt.store import save_prompt_file
from megatron_vega.superglue.formats import predictions_from_scores
from megatron_vega.superglue.readers import label_texts
from megatron_vega.superglue.scoring import evaluate
from megatron_vega.superglue.submission import write_predictions
from megatron_vega.training.checkpointing import check_save_dir


def resolve_model(run) -> tuple[ModelConfig, VegaTokenizer, dict]:
    """Model config and tokenizer from the checkpoint (its extra.config), or a preset sized to the tokenizer."""
    t, o = run.task, run.optim
    dropout = {k: getattr(o, k) for k in ("hidden_dropout", "attention_dropout") if getattr(o, k) is not None}
    extra = checkpoint.read_extra(t.load) if t.load else {}
    path = t.tokenizer_model or extra.get("config", {}).get("data", {}).get("tokenizer_model")
    if not path:
        raise VegaInputError("--tokenizer-model", "required (the checkpoint does not name its tokenizer)")
    tokenizer = VegaTokenizer(path)
    if t.load:
        cfg = ModelConfig(**{**inherited(extra["config"]["model"]), **dropout})
        check_vocab(tokenizer, cfg.vocab_size, path)
    else:  # random weights: the embedding simply gets one row per tokenizer id
        cfg = model_preset(run.model_preset, vocab_size=tokenizer.vocab_size, **dropout)
    return cfg, tokenizer, extra


def set_up(run) -> tuple[ModelConfig, VegaTokenizer, dict, TransformerConfig]:
    """The set-up every fine-tuning run shares (collective): the process group, the model config and tokenizer
    (``resolve_model``), the layout and --save checked, model parallelism seeded; returns those and the
    megatron-core config the model is built from."""
    t, o = run.task, run.optim
    _, world = runtime.init_distributed()
    model_cfg, tokenizer, extra = resolve_model(run)
    par = ParallelConfig(tensor_model_parallel_size=o.tensor_model_parallel_size)
    par.validate(model_cfg, world)
    if t.save:
        check_save_dir(t.save, t.load, t.overwrite)
    runtime.init_model_parallel(o.tensor_model_parallel_size, 1, seed=o.seed)
    return model_cfg, tokenizer, extra, transformer_config(model_cfg, par, "bf16" if o.bf16 else "fp32")


def load_weights(load: str, model, extra: dict, heads: dict) -> dict:
    """Loads --load into ``model``: the encoder, and the heads of ``heads`` ({task: head}) the checkpoint has
    (its head prefixes, empty when it has none)."""
    found = checkpoint.checkpoint_heads(extra, heads)
    checkpoint.load(load, model, with_head=bool(found), heads=found)
    return found


def saved_extra(run, model_cfg: ModelConfig, tokenizer: VegaTokenizer, finetune: dict) -> dict:
    """A fine-tuned checkpoint's ``extra``: the model and tokenizer to rebuild it, and the fine-tuning record
    (``finetune``'s entries plus the settings a later --load reads back)."""
    o = run.optim
    return {"config": {"model": asdict(model_cfg), "data": {"tokenizer_model": str(Path(tokenizer.path).resolve())}},
            "finetune": {**finetune, "cls_dropout": o.cls_dropout, "seq_length": o.seq_length,
                         "copa_style": run.task.copa_style}}


class Run:
    """One fine-tuning run: set up on construction (collective), executed by calling it."""

    def __init__(self, run):
        t, o = run.task, run.optim
        if run.prompt.save_prompt and Path(run.prompt.save_prompt).exists() and not t.overwrite:
            raise VegaInputError(run.prompt.save_prompt, "exists; pass --overwrite to replace it")
        self.start, self.run = time.perf_counter(), run
        self.model_cfg, self.tokenizer, extra, tc = set_up(run)

        need_test = bool(t.predict or run.transductive.transductive_rounds)
        files = task_files(t, need_train=o.epochs > 0, need_test=need_test)

        def read(name, task, limit, labelled):
            return read_split(name, task, files[name], limit, t.copa_style, labelled)

        self.train = read("train", t.task, t.max_train_examples, True) if o.epochs else None
        self.dev = read("dev", t.task, t.max_eval_examples, True) if files["dev"] else None
        self.test = read("test", t.task, t.max_eval_examples, False) if need_test else None
        self.extra_splits = [read(ax, ax, t.max_eval_examples, False) for ax in ("AX-b", "AX-g") if files.get(ax)]

        self.encoder = TextEncoder(self.tokenizer, o.seq_length)
        self.make_samples, collate_fn = make_samples, collate
        if t.format == "cloze":  # the LM head at a pattern's blank (finetune/cloze.py)
            from megatron_vega.finetune.cloze import build_cloze_model, collate_cloze
            self.model = build_cloze_model(run, [self.train, self.dev, self.test], self.model_cfg, self.tokenizer,
                                           tc)
            self.make_samples = lambda task, encoder, instances, training: self.model.cloze.samples(instances)
            collate_fn = collate_cloze
        else:
            self.model = build_task_model(t.task, self.model_cfg, tc, o.cls_dropout, o.seed)
        if t.load:
            heads = load_weights(t.load, self.model, extra, {t.task: self.model.head})  # a multi-task one too
            print_rank0(f"loaded {t.load}: encoder" + (" and head" if heads else " (new head)"))
        self.prompt_origin, teacher, lam = None, None, 0.0
        if run.prompt.prompt_tuning:
            self.prompt_origin = attach_prompt(run, self.model, self.model_cfg, self.tokenizer, tc.params_dtype)
            teacher, lam, where = build_teacher(run, self.model, self.model_cfg, tc.params_dtype)
            if teacher is not None:
                self.prompt_origin["panda"] = {"teacher": run.panda.panda_teacher, "lambda": lam,
                                               "lambda_from": where, "teacher_source": teacher.source_task,
                                               "config": asdict(run.panda)}
            structure = self.model.prompt.structure
            print_rank0(f"prompt tuning: {structure['type']} prompt of {structure['length']}, encoder "
                        f"{structure['encoder']}; trainable parameters {trainable_parameters(self.model):,} "
                        f"(prompt {sum(p.numel() for p in self.model.prompt.parameters()):,} + head "
                        f"{sum(p.numel() for p in self.model.head.parameters()):,})"
                        + (f"; PANDA teacher {run.panda.panda_teacher}, lambda {lam:g} ({where})" if teacher else ""))
        self.tuner = Finetuner(self.model, o, run.sift, self.tokenizer.pad_id, teacher, run.panda, lam, run.pdr,
                               collate_fn)
        self.samples = {}  # split name -> evaluation samples, tokenised once

    def _samples(self, split):
        if split.name not in self.samples:
            self.samples[split.name] = self.make_samples(split.task, self.encoder, split.instances, training=False)
        return self.samples[split.name]

    def predict(self, split) -> tuple[dict, dict]:
        """Predictions {key: label value} of the current weights, and their confidences."""
        samples = self._samples(split)
        choices = self.run.task.format == "cloze" and split.task == "ReCoRD"  # one row of candidate scores
        scores, confidence = instance_scores(split.task, split.instances, samples, self.tuner.predict(samples),
                                             "choice" if choices else None)
        return predictions_from_scores(split.task, split.instances, scores), confidence

    def evaluate_dev(self) -> tuple[float, dict]:
        metrics = evaluate(self.dev.task, self.dev.examples, self.predict(self.dev)[0],
                           data_where=self.dev.path, predictions_where="dev predictions")
        return selection_score(metrics), metrics

    def fit(self, instances, tag: str):
        samples = self.make_samples(self.train.task, self.encoder, instances, training=True)
        if not samples:
            raise VegaInputError(self.train.path, "no training sample (ReCoRD: no answer mention fits a window)")
        return self.tuner.train(samples, self.evaluate_dev, tag)

    def transductive(self, pretrained: dict) -> tuple[object, list[dict]]:
        """Round 0 and the transductive rounds; returns the best-dev result over rounds and the round log."""
        cfg = self.run.transductive
        best, rounds, previous = None, [], None
        for r in range(cfg.transductive_rounds + 1):
            instances, entry = self.train.instances, {"round": r}
            if r:
                pseudo = pseudo_labelled(self.test, *previous, cfg.transductive_threshold)
                instances = instances + pseudo
                entry["pseudo_labelled"] = len(pseudo)
                self.tuner.restore(pretrained)
            result = self.fit(instances, f"round {r}")
            improved = best is None or result.score > best.score
            best = result if improved else best
            entry.update(dev=result.metrics, epoch=result.epoch)
            if cfg.transductive_rounds:
                self.tuner.restore(result.weights)
                current = self.predict(self.test)
                if r:
                    entry["flip_rate"] = flip_rate(previous[0], current[0])
                previous = current
            rounds.append(entry)
            print_rank0(f"round {r}: " + json.dumps(entry))
            if r and not improved:
                print_rank0(f"transductive: dev did not improve in round {r}, stopping")
                break
            if r and entry["flip_rate"] < cfg.transductive_min_flip_rate:
                print_rank0(f"transductive: flip rate {entry['flip_rate']:.4f} below "
                            f"{cfg.transductive_min_flip_rate}, stopping")
                break
        return best, rounds

    def write(self, pred_dir: str) -> list[str]:
        paths = []
        for split in [self.test, *self.extra_splits]:
            predictions = self.predict(split)[0]
            if dist.get_rank() == 0:
                paths.append(str(write_predictions(split.task, split.examples, predictions, pred_dir,
                                                   overwrite=self.run.task.overwrite)))
            # The diagnostics are labelled: report them, on the whole files only (AX-g scores pairs of records).
            if split.name != "test" and self.run.task.max_eval_examples is None:
                print_rank0(f"{split.task}: " + json.dumps(evaluate(split.task, split.examples, predictions)))
        return paths

    def __call__(self) -> dict:
        t = self.run.task
        summary = {"task": t.task}
        if self.train is not None:
            best, summary["rounds"] = self.transductive(self.tuner.snapshot())
            self.tuner.restore(best.weights)
            summary.update(dev=best.metrics, epoch=best.epoch, steps=best.steps)
        elif self.dev is not None:
            summary["dev"] = self.evaluate_dev()[1]
        if t.predict:
            summary["predictions"] = self.write(t.predict)
        if t.save:
            extra = saved_extra(self.run, self.model_cfg, self.tokenizer,
                                {"task": t.task, "dev": summary.get("dev"), "labels": label_texts(t.task)})
            summary["saved"] = str(checkpoint.save(t.save, summary.get("steps", 0), self.model, extra))
        if self.run.prompt.save_prompt:
            meta = {"task": t.task, "dev": summary.get("dev"), "panda": None, **self.prompt_origin}
            save_prompt_file(self.run.prompt.save_prompt, self.model.prompt, self.model.head, self.model_cfg, meta,
                             overwrite=t.overwrite)
            summary["saved_prompt"] = self.run.prompt.save_prompt
        summary["seconds"] = round(time.perf_counter() - self.start, 1)
        print_rank0(json.dumps(summary))
        return summary


def finetune(run) -> dict:
    """Validate, build, fine-tune, predict, save; returns the summary printed as the last line."""
    run.validate()
    if run.task.format == "unimc":
        from megatron_vega.finetune.unimc import finetune_unimc
        return finetune_unimc(run)
    return Run(run)()
