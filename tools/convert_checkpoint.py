"""Checkpoint conversions.

  to-hf    --load CKPT --out DIR [--iteration N] [--tokenizer-model spm.model] [--verify] [--generator]
  from-hf  --hf-dir DIR --save CKPT [--task TASK] [--seed S] --tensor-model-parallel-size T
           --pipeline-model-parallel-size P
  reshard  --load CKPT --save OUT --tensor-model-parallel-size T --pipeline-model-parallel-size P

to-hf writes config.json, model.safetensors and the tokenizer so that transformers loads the directory with no
missing or unexpected keys: DebertaV2ForMaskedLM for a pretraining checkpoint; for a fine-tuning checkpoint
(finetune_superglue.py --save) DebertaV2ForSequenceClassification (BoolQ, CB, RTE, MultiRC) or
DebertaV2ForMultipleChoice (COPA) with the task's labels, or DebertaV2Model plus head.safetensors and a README
(WiC, WSC, ReCoRD); with --generator a COCO-LM checkpoint's auxiliary generator as its own DebertaV2ForMaskedLM
(docs/coco_lm.md). from-hf reads what transformers writes (either MLM-head naming, DebertaV2Model, task classes).
"""
import argparse

from megatron_vega.errors import exit_on_input_error


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    to_hf = sub.add_parser("to-hf", allow_abbrev=False, help="dist checkpoint (any layout) -> Hugging Face")
    to_hf.add_argument("--load", required=True)
    to_hf.add_argument("--out", required=True)
    to_hf.add_argument("--iteration", type=int, default=None, help="default: the latest")
    to_hf.add_argument("--tokenizer-model", default=None,
                       help="sentencepiece model to ship with the weights (default: the one the checkpoint records)")
    to_hf.add_argument("--verify", action="store_true",
                       help="run both models on the same inputs and print the largest logit difference")
    to_hf.add_argument("--generator", action="store_true",
                       help="export the auxiliary generator of a coco-lm checkpoint (DebertaV2ForMaskedLM) instead "
                            "of the main encoder")
    for name, help_text in [("from-hf", "Hugging Face DebertaV2 -> dist checkpoint"),
                            ("reshard", "dist checkpoint -> dist checkpoint written by another TP x PP layout")]:
        s = sub.add_parser(name, allow_abbrev=False, help=help_text)
        s.add_argument("--hf-dir" if name == "from-hf" else "--load", required=True)
        s.add_argument("--save", required=True)
        s.add_argument("--tensor-model-parallel-size", type=int, default=1)
        s.add_argument("--pipeline-model-parallel-size", type=int, default=1)
        if name == "from-hf":
            s.add_argument("--task", default=None,
                           help="SuperGLUE task of the directory's head: import it into a fine-tuning checkpoint "
                                "(default: the task to-hf recorded in config.json, if any)")
            s.add_argument("--seed", type=int, default=1234,
                           help="seed of the MLM head initialised for an encoder that comes without one")
    return p


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    from megatron_vega.convert import checkpoints
    with exit_on_input_error():
        if args.command == "to-hf":
            print(checkpoints.to_hf_dir(args.load, args.out, args.iteration, args.tokenizer_model, args.generator))
            if args.verify:
                print(checkpoints.verify_hf_dir(args.load, args.out, args.iteration, args.generator))
        elif args.command == "from-hf":
            for note in checkpoints.from_hf_dir(args.hf_dir, args.save, args.tensor_model_parallel_size,
                                                args.pipeline_model_parallel_size, args.task, args.seed):
                print(note)
            print(f"wrote {args.save}")
        else:
            checkpoints.reshard(args.load, args.save, args.tensor_model_parallel_size,
                                args.pipeline_model_parallel_size)
            print(f"wrote {args.save}")


if __name__ == "__main__":
    main()
