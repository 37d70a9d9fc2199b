"""Self-evolution against plain MLM continued training, on real text, over several seeds (docs/self_evolution.md).

  python examples/self_evolution_experiment.py [--corpus-dir DIR] [--work runs/se-experiment]
      [--pretrain-minutes 20 | --pretrain-steps N] [--se-steps 150] [--seeds 1 2 3]

1. Data: WikiText-2 (its test and valid files, the ones the shared data holds) and tinyshakespeare from
   --corpus-dir (default $VEGA_SHARED_DATA/corpus, else ../shared/data/corpus; the run is skipped, exit 0, when
   they are absent): a 2000-piece sentencepiece model and one indexed corpus per file, split 95/5/0 (the 5 % of
   each are the validation blocks).
2. The PLM: a 4-layer x 256 encoder, MLM-pretrained for --pretrain-minutes (the step count comes from timed steps,
   so that the LR schedule ends on time) or exactly --pretrain-steps.
3. Stage 1, once (eval mode, no dropout: the same for every seed): NLL > 0.1 nats, specials never, at most
   --max-ratio of a block's tokens.
4. For each seed, two arms from the PLM, both with the SE4PLMs continued-training schedule (--arm-lr, a tenth of
   the steps warming up, linear decay): A, stage 2 (self-evolution) for --se-steps steps; B, plain MLM for as many
   steps as make its model FLOPs equal A's stage 2 plus stage 1 (the equal-compute arm).
5. Every model is measured the same way: mean NLL of the gold token at the mined positions of a fixed sample of
   blocks (unmasked input), and validation MLM loss over the validation blocks with the same masking.

The run ends with a table of mean ± std over the seeds (results.json in --work holds every number and timing).
Finished pieces (tokenizer, corpora, PLM, index, arms, measurements) are kept: the same command continues a run.
One process, TP=PP=1; OMP_NUM_THREADS sets the threads.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from megatron_vega.config import CheckpointConfig, LoggingConfig, ParallelConfig, TrainConfig, model_preset
from megatron_vega.data.config import DataConfig
from megatron_vega.training.arguments import RunConfig

REPO = Path(__file__).resolve().parents[1]

CORPUS_FILES = ("wikitext2.test.tokens", "wikitext2.valid.tokens", "tinyshakespeare.txt")
VOCAB, SEQ, MICRO_BATCH, GLOBAL_BATCH = 2000, 128, 16, 32
PLM_SEED = 1234  # the PLM's and every measurement's seed: all models see the same validation masking


def fail(where, problem: str) -> None:
    print(f"error: {where}: {problem}", file=sys.stderr)
    sys.exit(2)


def default_corpus_dir() -> Path:
    shared = os.environ.get("VEGA_SHARED_DATA")
    return Path(shared) / "corpus" if shared else REPO.parent / "shared" / "data" / "corpus"


def prepare(corpus_dir: Path, work: Path) -> tuple[list[str], str]:
    """Tokenizer over all the text, then one indexed corpus per file. Returns (data prefixes, tokenizer model)."""
    inputs = [str(corpus_dir / name) for name in CORPUS_FILES]
    spm = work / "spm.model"
    if not spm.exists():
        subprocess.run([sys.executable, str(REPO / "tools" / "train_tokenizer.py"), "--input", *inputs,
                        "--vocab-size", str(VOCAB), "--model-prefix", str(work / "spm")], check=True)
    prefixes = []
    for path in inputs:
        prefix = work / Path(path).name.replace(".", "-")
        if not Path(f"{prefix}.idx").exists():
            subprocess.run([sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", path,
                            "--output-prefix", str(prefix), "--tokenizer-model", str(spm), "--workers", "2",
                            "--log-interval", "0"], check=True)
        prefixes.append(str(prefix))
    return prefixes, str(spm)


def make_run(args, data, spm, steps, save=None, load=None, seed=PLM_SEED, lr=None, **objective) -> RunConfig:
    """The PLM's pretraining run (load None), or a continued run from `load` (weights only, new schedule)."""
    model = model_preset("tiny", num_layers=args.num_layers, hidden_size=args.hidden_size,
                         num_attention_heads=args.hidden_size // 64, ffn_hidden_size=4 * args.hidden_size,
                         vocab_size=VOCAB)
    if load is None:  # pretraining: a short warm-up, cosine to a tenth
        schedule = dict(lr=args.pretrain_lr, min_lr=args.pretrain_lr / 10, lr_decay_style="cosine",
                        lr_warmup_fraction=0.05)
    else:  # continued training (SE4PLMs: 1e-5, warm-up, linear decay to 0)
        schedule = dict(lr=lr or args.arm_lr, lr_decay_style="linear", lr_warmup_fraction=0.1)
    run = RunConfig(model=model, parallel=ParallelConfig(),
                    train=TrainConfig(micro_batch_size=MICRO_BATCH, global_batch_size=GLOBAL_BATCH,
                                      train_iters=steps, seed=seed, eval_interval=0, exit_on_signal=False,
                                      **schedule),
                    checkpoint=CheckpointConfig(save=save, load=load, finetune=load is not None),
                    logging=LoggingConfig(log_interval=max(steps // 10, 1), peak_tflops=1.0),
                    data=DataConfig(data_path=data, tokenizer_model=spm, seq_length=SEQ, split="95,5,0"))
    from megatron_vega.objectives.arguments import objective_config
    return replace(run, objective=objective_config(**objective)) if objective else run


def pretrain_steps(args, data, spm) -> int:
    """--pretrain-steps, or the steps that fit --pretrain-minutes at the measured speed of a training step."""
    if args.pretrain_steps:
        return args.pretrain_steps
    from megatron_vega.data.mlm_dataset import build_mlm_datasets
    from megatron_vega.data.tokenizer import vocabulary
    from megatron_vega.objectives.pretrain import build_trainer
    run = make_run(args, data, spm, 10_000)
    train_ds = build_mlm_datasets(run.data, vocabulary(run), run.train.seed)[0]
    trainer = build_trainer(run)
    for _ in range(2):  # warm-up: allocator, first-call overheads
        trainer.train_step(train_ds)
    start, timed = time.perf_counter(), 4
    for _ in range(timed):
        trainer.train_step(train_ds)
    per_step = (time.perf_counter() - start) / timed
    steps = max(1, int(args.pretrain_minutes * 60 / per_step))
    print(f"pretraining budget: {args.pretrain_minutes:g} min at {per_step:.2f} s/step -> {steps} steps", flush=True)
    return steps


def equal_compute_steps(run, se_steps: int, index) -> tuple[int, dict]:
    """Plain-MLM steps with the model FLOPs of stage 1 (a forward over every train block, the output layer at
    every position) plus stage 2 (training at the mined positions and a reference forward each step)."""
    from megatron_vega.training.flops import forward_flops_per_token, train_flops_per_token
    cfg, tokens_per_step = run.model, GLOBAL_BATCH * SEQ
    stats = index.stats()
    mined_fraction = stats["positions"] / max(stats["blocks"] * SEQ, 1)
    stage1 = stats["blocks"] * SEQ * forward_flops_per_token(cfg, SEQ, 1.0, MICRO_BATCH)
    stage2 = se_steps * tokens_per_step * train_flops_per_token(cfg, SEQ, mined_fraction, True, MICRO_BATCH)
    mlm_step = tokens_per_step * train_flops_per_token(cfg, SEQ, run.data.mask_prob, False, MICRO_BATCH)
    steps = max(1, round((stage1 + stage2) / mlm_step))
    return steps, {"stage1_pflop": stage1 / 1e15, "stage2_pflop": stage2 / 1e15, "mlm_steps": steps}


def measure(args, data, spm, ckpt: str, nll_index: dict) -> dict:
    """Mean NLL at the mined positions of the sampled blocks, and validation MLM loss, of the weights in ckpt."""
    from megatron_vega.data.mlm_dataset import build_mlm_datasets
    from megatron_vega.data.tokenizer import vocabulary
    from megatron_vega.objectives.pretrain import build_trainer
    from megatron_vega.selfevolution.stage1 import mean_nll_on_index
    run = make_run(args, data, spm, 1, load=ckpt)
    mined_nll = mean_nll_on_index(run, nll_index)
    valid = build_mlm_datasets(run.data, vocabulary(run), PLM_SEED)[1]
    run = replace(run, train=replace(run.train, eval_iters=min(math.ceil(len(valid) / GLOBAL_BATCH),
                                                               args.max_eval_batches)))
    return {"mined_nll": mined_nll, "valid_mlm_loss": build_trainer(run).evaluate(valid)["lm loss"]}


def spread(values: list[float]) -> str:
    mean = float(np.mean(values))
    return f"{mean:.4f} ± {float(np.std(values, ddof=1)):.4f}" if len(values) > 1 else f"{mean:.4f}"


def table(results: dict) -> str:
    seeds = results["seeds"]
    head = f"{'model':<40}{'steps':>7}   {'mined-token NLL':<20}{'validation MLM loss':<20}"
    plm = results["plm"]
    lines = [head, "-" * len(head), f"{'PLM (start of both arms)':<40}{plm['steps'] or '?':>7}   "
                                    f"{plm['mined_nll']:<20.4f}{plm['valid_mlm_loss']:.4f}"]
    for arm, name in (("se", "A  self-evolution, stage 1 + 2"), ("mlm", "B  plain MLM, equal compute")):
        rows = [results["arms"][str(s)][arm] for s in seeds]
        lines.append(f"{name:<40}{rows[0]['steps']:>7}   {spread([r['mined_nll'] for r in rows]):<20}"
                     f"{spread([r['valid_mlm_loss'] for r in rows])}")
    lines.append(f"(mean ± sample std over seeds {', '.join(map(str, seeds))}; mined-token NLL on "
                 f"{results['nll_blocks']} blocks' {results['nll_positions']} mined positions, unmasked input)")
    for s in seeds:
        a, b = results["arms"][str(s)]["se"], results["arms"][str(s)]["mlm"]
        lines.append(f"  seed {s}: A {a['mined_nll']:.4f} / {a['valid_mlm_loss']:.4f}   "
                     f"B {b['mined_nll']:.4f} / {b['valid_mlm_loss']:.4f}")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus-dir", type=Path, default=default_corpus_dir(),
                        help=f"holds {', '.join(CORPUS_FILES)} (default: $VEGA_SHARED_DATA/corpus)")
    parser.add_argument("--work", type=Path, default=Path("runs/se-experiment"))
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--pretrain-minutes", type=float, default=20.0, help="pretraining wall-time budget")
    budget.add_argument("--pretrain-steps", type=int, default=None, help="pretraining steps (instead of minutes)")
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--hidden-size", type=int, default=256, help="a multiple of 64 (heads of 64)")
    parser.add_argument("--se-steps", type=int, default=150, help="stage-2 steps of arm A")
    parser.add_argument("--arm-lr", type=float, default=1e-5, help="peak LR of both arms (SE4PLMs: 1e-5)")
    parser.add_argument("--se-alpha", type=float, default=0.5)
    parser.add_argument("--max-ratio", type=float, default=0.15,
                        help="cap the mined positions at this fraction of a block's tokens (highest NLL first)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--nll-blocks", type=int, default=512, help="blocks sampled for the mined-token NLL")
    parser.add_argument("--max-eval-batches", type=int, default=20, help="validation batches (of 32 blocks) at most")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    missing = [name for name in CORPUS_FILES if not (args.corpus_dir / name).is_file()]
    if missing:
        print(f"skipped: {', '.join(missing)} not found in {args.corpus_dir} (set VEGA_SHARED_DATA or --corpus-dir)")
        return
    if args.hidden_size % 64:
        fail("--hidden-size", f"must be a multiple of 64, got {args.hidden_size}")
    from megatron_vega.objectives.pretrain import pretrain
    from megatron_vega.selfevolution.neglected_index import NeglectedIndex
    from megatron_vega.selfevolution.stage1 import MiningConfig, mine
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    results_path = work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"arms": {}}
    settings = {k: v for k, v in vars(args).items() if k not in ("corpus_dir", "work", "seeds")}
    if results.setdefault("settings", settings) != settings:  # kept pieces would mix two experiments
        changed = ", ".join(f"--{k.replace('_', '-')}" for k in settings if results["settings"].get(k) != settings[k])
        fail(work, f"holds a run with other settings ({changed}); choose another --work")
    results["seeds"] = args.seeds

    def timed(key, fn):
        start = time.perf_counter()
        out = fn()
        results.setdefault("seconds", {})[key] = round(time.perf_counter() - start, 1)
        return out

    data, spm = prepare(args.corpus_dir, work)
    plm = str(work / "plm")
    if not Path(plm, "latest_checkpointed_iteration.txt").exists():
        steps = pretrain_steps(args, data, spm)
        timed("pretrain", lambda: pretrain(make_run(args, data, spm, steps, save=plm)))
        results["plm_steps"] = steps
    index_path = str(work / f"neglected-cap{args.max_ratio:g}.nidx")
    if not Path(index_path).exists():
        timed("stage1", lambda: mine(make_run(args, data, spm, 1, load=plm),
                                     MiningConfig(output=index_path, blocks_per_shard=512, max_ratio=args.max_ratio)))
    index = NeglectedIndex(index_path)
    mined = [b for b in index if len(index[b])]
    sample = np.random.default_rng(0).choice(mined, size=min(args.nll_blocks, len(mined)), replace=False)
    nll_index = {int(b): index[int(b)] for b in np.sort(sample)}
    results.update(nll_blocks=len(nll_index), nll_positions=int(sum(len(p) for p in nll_index.values())),
                   index={k: v for k, v in index.stats().items() if k != "histogram"})
    mlm_steps, compute = equal_compute_steps(make_run(args, data, spm, 1, load=plm), args.se_steps, index)
    results["compute"] = compute
    if "plm" not in results:
        results["plm"] = {"steps": results.get("plm_steps"), **timed("measure plm", lambda: measure(
            args, data, spm, plm, nll_index))}
    for seed in args.seeds:
        arms = results["arms"].setdefault(str(seed), {})
        se = dict(objective="self-evolution", neglected_tokens=index_path, se_alpha=args.se_alpha)
        for arm, steps, objective in (("se", args.se_steps, se), ("mlm", mlm_steps, {})):
            if arm in arms:
                continue
            save = str(work / f"seed-{seed}" / arm)
            if not Path(save, "latest_checkpointed_iteration.txt").exists():
                run = make_run(args, data, spm, steps, save=save, load=plm, seed=seed, **objective)
                timed(f"seed {seed} {arm}", lambda run=run: pretrain(run))
            arms[arm] = {"steps": steps, **measure(args, data, spm, save, nll_index)}
            results_path.write_text(json.dumps(results, indent=2))
    results_path.write_text(json.dumps(results, indent=2))
    print(f"\nindex: {results['index']}; equal compute: {compute}; seconds: {results.get('seconds')}")
    print(table(results))


if __name__ == "__main__":
    main()
