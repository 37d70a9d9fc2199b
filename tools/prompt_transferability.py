"""Prompt transferability: the source x target matrix of task-embedding similarities (docs/prompt_tuning_and_panda.md).

    python tools/prompt_transferability.py --load CKPT --prompts RTE=rte.pt WSC=wsc.pt CB=cb.pt --targets CB \
        --data-dir SUPERGLUE [--metric cosine|overlap] [--json OUT]
    torchrun --nproc_per_node T tools/prompt_transferability.py ... --tensor-model-parallel-size T

Every prompt is a source; each target needs its own prompt among them (named after the task, or NAME=FILE) and
its inputs (<data-dir>/<Task>/val.jsonl, or --data-file TASK=FILE). Prints the table; --json writes
{"metric", "sources", "targets", "matrix": {source: {target: value}}}, which PANDA's --panda-transferability reads.
"""
import argparse
import json
import os
import sys
from pathlib import Path

from megatron_vega.config import PRESETS, world_size
from megatron_vega.errors import VegaInputError, exit_on_input_error
from megatron_vega.prompt.transferability import CENTERS, METRICS


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", help="Backbone checkpoint the prompts were trained on.")
    p.add_argument("--model-preset", choices=list(PRESETS), help="Random backbone of this preset instead of --load "
                                                                  "(as finetune_superglue.py --model-preset).")
    p.add_argument("--tokenizer-model", help="sentencepiece model (default: the checkpoint's).")
    p.add_argument("--prompts", nargs="+", required=True,
                   help="Prompt files, as FILE (named by its task) or NAME=FILE.")
    p.add_argument("--targets", nargs="+", required=True, help="Target tasks (each needs a prompt of that name).")
    p.add_argument("--data-dir", help="SuperGLUE parent directory: <dir>/<Task>/<split>.jsonl.")
    p.add_argument("--data-file", nargs="*", default=[], help="TASK=FILE overrides of the target inputs.")
    p.add_argument("--split", default="val", help="Which file of a task folder gives the inputs (default val).")
    p.add_argument("--max-examples", type=int, help="Use the first N records of each target file.")
    p.add_argument("--metric", default="cosine", choices=list(METRICS))
    p.add_argument("--center", default="none", choices=list(CENTERS),
                   help="none: raw activations (the spec's form); backbone: subtract the no-prompt activations, "
                        "so that only what each prompt changes is compared.")
    p.add_argument("--seq-length", type=int, default=256)
    p.add_argument("--micro-batch-size", type=int, default=16)
    p.add_argument("--tensor-model-parallel-size", type=int, default=1)
    p.add_argument("--json", help="Also write the matrix here (atomically).")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing --json file.")
    p.add_argument("--dry-run", action="store_true", help="Check the flags and the layout against WORLD_SIZE, "
                                                          "read nothing (the recipes' check).")
    args = p.parse_args(argv)
    if bool(args.load) == bool(args.model_preset):
        raise VegaInputError("--load", "give exactly one of --load CKPT or --model-preset NAME")
    if args.json and Path(args.json).exists() and not args.overwrite:
        raise VegaInputError(args.json, "exists; pass --overwrite to replace it")
    return args


def target_file(args, task: str) -> str:
    overrides = dict(item.split("=", 1) for item in args.data_file if "=" in item)
    if task in overrides:
        return overrides[task]
    if not args.data_dir:
        raise VegaInputError("--data-dir", f"required for target {task} (or --data-file {task}=FILE)")
    return str(Path(args.data_dir) / task / f"{args.split}.jsonl")


def dry_run(args) -> None:
    world, tp = world_size(), args.tensor_model_parallel_size
    if tp < 1 or world % tp:
        raise VegaInputError("--tensor-model-parallel-size", f"TP={tp} does not divide the world size {world}")
    for target in args.targets:
        target_file(args, target)
    print(f"layout: world {world} = TP {tp} x PP 1 x DP {world // tp}; {len(args.prompts)} prompts x "
          f"{len(args.targets)} targets, {args.metric}, center {args.center}")


def main(argv=None) -> int:
    with exit_on_input_error():
        args = parse_args(sys.argv[1:] if argv is None else argv)
        dry_run(args) if args.dry_run else run(args)
    return 0


def run(args) -> None:
    import torch.distributed as dist

    from megatron_vega import runtime
    from megatron_vega.config import ParallelConfig
    from megatron_vega.finetune import checkpoint
    from megatron_vega.finetune.config import FinetuneRun, TaskConfig
    from megatron_vega.finetune.features import TextEncoder, collate, make_samples
    from megatron_vega.finetune.run import resolve_model
    from megatron_vega.finetune.task_model import build_task_model
    from megatron_vega.finetune.tasks import read_split
    from megatron_vega.model.build import transformer_config
    from megatron_vega.prompt.store import prompt_from_file, read_prompt_file
    from megatron_vega.prompt.transferability import format_table, task_embedding, transfer_matrix

    fake = FinetuneRun(task=TaskConfig(task=args.targets[0], load=args.load, tokenizer_model=args.tokenizer_model),
                       model_preset=args.model_preset)
    _, world = runtime.init_distributed()
    model_cfg, tokenizer, _ = resolve_model(fake)
    par = ParallelConfig(tensor_model_parallel_size=args.tensor_model_parallel_size)
    par.validate(model_cfg, world)
    runtime.init_model_parallel(args.tensor_model_parallel_size, 1, seed=1234)
    encoder = build_task_model(args.targets[0], model_cfg, transformer_config(model_cfg, par), 0.0, 1234)
    if args.load:
        checkpoint.load(args.load, encoder, with_head=False)
    encoder = encoder.encoder

    prompts = {}
    for item in args.prompts:
        name, path = item.split("=", 1) if "=" in item else (None, item)
        state = read_prompt_file(path, model_cfg)
        prompts[name or state["task"]] = prompt_from_file(state, model_cfg, path).to(runtime.device())
    for target in args.targets:
        if target not in prompts:
            raise VegaInputError("--targets", f"{target} has no prompt among --prompts ({', '.join(prompts)})")

    text = TextEncoder(tokenizer, args.seq_length)
    samples = {}
    for target in args.targets:
        path = target_file(args, target)
        split = read_split(args.split, target, path, args.max_examples, "deberta", labelled=False)
        samples[target] = make_samples(target, text, split.instances, training=False)
    cache = {}

    def embed(name, target):
        if (name, target) not in cache:
            prompt = None if name is None else prompts[name]
            rows, size = samples[target], args.micro_batch_size
            batches = (collate(rows[i:i + size], tokenizer.pad_id) for i in range(0, len(rows), size))
            cache[name, target] = task_embedding(encoder, prompt, batches)
        return cache[name, target]

    sources = list(prompts)
    matrix = transfer_matrix(embed, sources, args.targets, args.metric, args.center)
    if dist.get_rank() == 0:
        print(format_table(matrix, args.targets, f"{args.metric}, center {args.center}"))
        files = {name: item.split("=", 1)[-1] for name, item in zip(sources, args.prompts)}
        result = {"metric": args.metric, "center": args.center, "sources": sources, "targets": args.targets,
                  "matrix": matrix, "prompts": files}
        print(json.dumps(result))
        if args.json:
            tmp = f"{args.json}.tmp{os.getpid()}"
            Path(tmp).write_text(json.dumps(result, indent=1) + "\n")
            os.replace(tmp, args.json)
    dist.barrier()


if __name__ == "__main__":
    sys.exit(main())
