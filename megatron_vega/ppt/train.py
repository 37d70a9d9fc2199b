"""PPT prompt pre-training (``tools/pretrain_prompt.py``, docs/unimc_and_ppt.md "PPT"): only the prompt trains, the
encoder and its MLM head are frozen.

Every rank builds the same examples from the same seed. A step takes ``global_batch_size`` examples in a seeded
order; data-parallel rank r takes its micro-batches from its own slice. The prompt is replicated: its gradient is
already complete on every tensor-parallel rank (``prompt/prompt.py``) and is averaged over the data-parallel group
here, so every rank takes the same optimizer step. Dev accuracy is measured on held-out documents every
``--eval-interval`` steps; the best-dev prompt (accuracy, then loss) is written at the end as a prompt file with an
empty head.
"""
import json
import time

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_vega import runtime
from megatron_vega.config import ParallelConfig
from megatron_vega.data.sampler import check_batch_sizes
from megatron_vega.errors import VegaInputError
from megatron_vega.finetune.config import FinetuneRun, OptimConfig, TaskConfig
from megatron_vega.finetune.run import resolve_model
from megatron_vega.finetune.trainer import print_rank0
from megatron_vega.model.build import build_model, transformer_config
from megatron_vega.model.heads import MLM_HEAD
from megatron_vega.model.weights import init_weights
from megatron_vega.ppt import data as ppt_data
from megatron_vega.ppt.model import collate, ppt_loss, slot_logits
from megatron_vega.prompt.store import build_prompt, save_prompt_file
from megatron_vega.unimc.layout import verbalizer_id
from megatron_vega.unimc.model import load_mlm

DEFAULT_WORDS = {"nsp3": ppt_data.NSP_WORDS, "single": ppt_data.SINGLE_WORDS,
                 "nss": ppt_data.OPTION_LETTERS, "unified": ppt_data.OPTION_LETTERS}


def vocab_for(cfg, tokenizer) -> ppt_data.Vocab:
    words = list(cfg.ppt_label_words) or list(DEFAULT_WORDS[cfg.ppt_task])
    need = {"nsp3": 3, "single": len(cfg.ppt_single_thresholds), "nss": cfg.ppt_options, "unified": 16}[cfg.ppt_task]
    if len(words) < need:
        raise VegaInputError("--ppt-label-words", f"{cfg.ppt_task} needs {need} label words, got {len(words)}")
    ids = tuple(verbalizer_id(tokenizer, w, "--ppt-label-words") for w in words[:need])
    if len(set(ids)) != len(ids):
        raise VegaInputError("--ppt-label-words", "two label words are the same token")
    return ppt_data.Vocab(tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id, ids,
                          tuple(tokenizer.encode("?")), tuple(tokenizer.encode(".")),
                          tuple(tokenizer.encode("The correct one is")))


def build_splits(cfg, tokenizer, vocab) -> tuple[list, list, dict]:
    """(train, dev) examples and what was read, the same on every rank."""
    budget = cfg.seq_length - (cfg.prompt_length if cfg.prompt_type == "shallow" else 0)
    if budget < 8:
        raise VegaInputError("--seq-length", f"{cfg.seq_length} leaves no room next to a shallow prompt of "
                                             f"{cfg.prompt_length}")
    if cfg.ppt_task == "single":
        examples = ppt_data.single_examples(cfg.text, tokenizer.encode, vocab, budget, cfg.ppt_single_thresholds)
        order = np.random.default_rng((cfg.seed, 0)).permutation(len(examples))
        n_dev = max(1, round(cfg.ppt_dev_fraction * len(examples)))
        return [examples[i] for i in order[n_dev:]], [examples[i] for i in order[:n_dev]], {"records": len(examples)}
    if cfg.data_path:
        from megatron_vega.data.corpus import open_indexed_dataset
        dataset = open_indexed_dataset(cfg.data_path)
        docs = ppt_data.id_documents((dataset[i] for i in range(len(dataset))),
                                     ppt_data.sentence_end_ids(tokenizer))
    else:
        docs = ppt_data.text_documents(cfg.text, tokenizer.encode, tuple(cfg.json_keys))
    docs = ppt_data.usable(docs, cfg.ppt_min_sentences, cfg.ppt_min_sentence_tokens)
    train_docs, dev_docs = ppt_data.split_documents(docs, cfg.ppt_dev_fraction, cfg.seed)
    train = ppt_data.build_examples(cfg.ppt_task, train_docs, vocab, budget, cfg.seed, 1, cfg.ppt_options)
    dev = ppt_data.build_examples(cfg.ppt_task, dev_docs, vocab, budget, cfg.seed, 2, cfg.ppt_options)
    return train, dev, {"documents": {"train": len(train_docs), "dev": len(dev_docs)}}


def dry_run(cfg, world: int) -> dict:
    tp = cfg.tensor_model_parallel_size
    if world % tp:
        raise VegaInputError("--tensor-model-parallel-size", f"TP={tp} does not divide the world size {world}")
    dp = world // tp
    gbs = cfg.global_batch_size or cfg.micro_batch_size * dp
    check_batch_sizes(gbs, cfg.micro_batch_size, dp)
    print(f"layout: world {world} = TP {tp} x PP 1 x DP {dp}; global batch {gbs} = "
          f"{gbs // (cfg.micro_batch_size * dp)} micro-batches x {cfg.micro_batch_size} x DP {dp}")
    print(f"PPT {cfg.ppt_task}: {cfg.prompt_type} prompt of {cfg.prompt_length}, {cfg.ppt_loss} loss, "
          f"{cfg.train_iters} steps, lr {cfg.lr:g}, frozen backbone -> {cfg.save}")
    return {"world": world, "tp": tp, "dp": dp, "global_batch": gbs}


class PromptPretrainer:
    """The frozen encoder + MLM head, the prompt, its optimizer and the data: ``run()`` trains and saves."""

    def __init__(self, cfg):
        self.cfg = cfg
        _, world = runtime.init_distributed()
        fake = FinetuneRun(task=TaskConfig(task="RTE", load=cfg.load, tokenizer_model=cfg.tokenizer_model),
                           optim=OptimConfig(hidden_dropout=cfg.hidden_dropout,
                                             attention_dropout=cfg.attention_dropout, seed=cfg.seed),
                           model_preset=cfg.model_preset)
        self.model_cfg, self.tokenizer, _ = resolve_model(fake)
        par = ParallelConfig(tensor_model_parallel_size=cfg.tensor_model_parallel_size)
        par.validate(self.model_cfg, world)
        self.tp = cfg.tensor_model_parallel_size
        self.dp, self.dp_rank = world // self.tp, dist.get_rank() // self.tp
        self.global_batch = cfg.global_batch_size or cfg.micro_batch_size * self.dp
        check_batch_sizes(self.global_batch, cfg.micro_batch_size, self.dp)
        runtime.init_model_parallel(self.tp, 1, seed=cfg.seed)
        self.vocab = vocab_for(cfg, self.tokenizer)
        self.train, self.dev, self.read = build_splits(cfg, self.tokenizer, self.vocab)
        keep = np.random.default_rng((cfg.seed, 4)).permutation(len(self.dev))[:cfg.ppt_max_dev_examples]
        self.dev = [self.dev[i] for i in sorted(keep)]  # a seeded sample of every dev document, not the first ones
        if not self.train or not self.dev:
            raise VegaInputError(cfg.data_path or cfg.text, f"too little text: {len(self.train)} train and "
                                                            f"{len(self.dev)} dev examples")
        [self.encoder] = build_model(self.model_cfg, transformer_config(self.model_cfg, par), heads=(MLM_HEAD,))
        init_weights([self.encoder], cfg.seed)
        if cfg.load:
            load_mlm(cfg.load, self.encoder)
        self.encoder.to(runtime.device())
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.prompt = build_prompt(cfg, self.model_cfg, self.encoder, self.tokenizer, cfg.seed).to(runtime.device())
        self.optimizer = torch.optim.AdamW(self.prompt.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def _batch(self, examples) -> dict:
        batch = collate(examples, self.tokenizer.pad_id, self.vocab.label_ids)
        return {k: v.to(runtime.device()) for k, v in batch.items()}

    def step(self, examples) -> float:
        """One optimizer step on this step's global batch (every rank passes the same list)."""
        cfg, mbs = self.cfg, self.cfg.micro_batch_size
        local = examples[self.dp_rank::self.dp]
        micro = [local[i:i + mbs] for i in range(0, len(local), mbs)]
        self.optimizer.zero_grad()
        total = torch.zeros((), device=runtime.device())
        for chunk in micro:
            batch = self._batch(chunk)
            loss, _ = ppt_loss(slot_logits(self.prompt, self.encoder, batch), batch, self.vocab.label_ids,
                               cfg.ppt_loss)
            (loss / len(micro)).backward()
            total += loss.detach() / len(micro)
        group = parallel_state.get_data_parallel_group()
        for p in self.prompt.parameters():
            if p.grad is not None and self.dp > 1:
                dist.all_reduce(p.grad, group=group)
                p.grad /= self.dp
        if cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.prompt.parameters(), cfg.clip_grad)
        self.optimizer.step()
        dist.all_reduce(total, group=group)
        return float(total) / self.dp

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Accuracy over the label words and over the whole vocabulary (PPT's), on the whole dev set."""
        self.prompt.eval()
        self.encoder.eval()
        counts = torch.zeros(3, device=runtime.device())
        local = self.dev[self.dp_rank::self.dp]
        for i in range(0, len(local), self.cfg.micro_batch_size):
            batch = self._batch(local[i:i + self.cfg.micro_batch_size])
            loss, c = ppt_loss(slot_logits(self.prompt, self.encoder, batch), batch, self.vocab.label_ids,
                               self.cfg.ppt_loss)
            counts += torch.stack([loss * len(batch["label"]), c["correct"].float(), c["vocab_correct"].float()])
        dist.all_reduce(counts, group=parallel_state.get_data_parallel_group())
        self.prompt.train()
        self.encoder.train()
        n = len(self.dev)
        return {"loss": round(float(counts[0]) / n, 5), "accuracy": round(float(counts[1]) / n, 4),
                "vocab_accuracy": round(float(counts[2]) / n, 4), "examples": n}

    def run(self) -> dict:
        cfg, start = self.cfg, time.perf_counter()
        majority = max(ppt_data.label_distribution(self.dev).values())
        print_rank0(json.dumps({"ppt_task": cfg.ppt_task, **self.read, "train_examples": len(self.train),
                                "dev_examples": len(self.dev),
                                "train_labels": ppt_data.label_distribution(self.train),
                                "dev_labels": ppt_data.label_distribution(self.dev),
                                "label_ids": list(self.vocab.label_ids), "prompt_parameters":
                                    sum(p.numel() for p in self.prompt.parameters())}))
        initial = self.evaluate()
        print_rank0(f"dev before training: {json.dumps(initial)} (majority class {majority:.4f})")
        best, best_state, best_iter = initial, self._state(), 0
        rng = np.random.default_rng((cfg.seed, 3))
        order, cursor, losses = rng.permutation(len(self.train)), 0, []
        for it in range(1, cfg.train_iters + 1):
            if cursor + self.global_batch > len(order):  # a new epoch, in a new seeded order
                order, cursor = rng.permutation(len(self.train)), 0
            if self.global_batch > len(order):
                raise VegaInputError("--global-batch-size", f"larger than the {len(order)} training examples")
            losses.append(self.step([self.train[i] for i in order[cursor:cursor + self.global_batch]]))
            cursor += self.global_batch
            if it % cfg.log_interval == 0:
                print_rank0(f"iteration {it}/{cfg.train_iters}: loss {np.mean(losses[-cfg.log_interval:]):.6f}")
            if it % cfg.eval_interval == 0 or it == cfg.train_iters:
                metrics = self.evaluate()
                print_rank0(f"iteration {it}: dev {json.dumps(metrics)}")
                if (metrics["accuracy"], -metrics["loss"]) > (best["accuracy"], -best["loss"]):  # ties: lower loss
                    best, best_state, best_iter = metrics, self._state(), it
        self.prompt.load_state_dict(best_state)
        meta = {"task": f"PPT-{cfg.ppt_task}", "dev": best, "panda": None, "transferred_from": None,
                "ppt": {"task": cfg.ppt_task, "iteration": best_iter, "loss": cfg.ppt_loss,
                        "label_ids": list(self.vocab.label_ids), "seed": cfg.seed,
                        "data": cfg.data_path or cfg.text, "backbone": cfg.load or cfg.model_preset}}
        save_prompt_file(cfg.save, self.prompt, torch.nn.Module(), self.model_cfg, meta, cfg.overwrite)
        summary = {"ppt_task": cfg.ppt_task, "train_losses": losses, "dev_initial": initial,
                   "dev_best": best, "best_iteration": best_iter, "majority": majority, "saved": cfg.save,
                   "seconds": round(time.perf_counter() - start, 1)}
        print_rank0(json.dumps({k: v for k, v in summary.items() if k != "train_losses"}))
        return summary

    def _state(self) -> dict:
        return {k: v.detach().clone() for k, v in self.prompt.state_dict().items()}
