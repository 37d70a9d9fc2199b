#!/usr/bin/env python
"""Fill the blanks of a text with a GLM-pretrained checkpoint (pretrain_vega.py --objective glm), one process:

    python tools/fill_blanks.py --load CKPT --tokenizer-model spm.model --text "He [MASK] to the station."
    python tools/fill_blanks.py ... --temperature 0.8 --num-samples 3 --seed 1

Each [MASK] (a short span), [sMASK] (a sentence) or [gMASK] (a long span) is generated left to right, the blanks
in the text's order (docs/glm_and_cloze.md). Prints the input and each filled text, the fills in brackets.
"""
import argparse

from megatron_vega.errors import VegaInputError, exit_on_input_error


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", required=True, help="checkpoint directory of a GLM pretraining run")
    parser.add_argument("--tokenizer-model", required=True, help="the sentencepiece model it was trained with")
    parser.add_argument("--text", required=True, help="text with [MASK] / [sMASK] / [gMASK] blanks")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0: greedy (default); > 0: sample from softmax(logits / temperature)")
    parser.add_argument("--num-samples", type=int, default=1, help="filled texts to print (sampling)")
    parser.add_argument("--max-tokens", type=int, default=20, help="longest fill of one blank (default 20)")
    parser.add_argument("--ckpt-step", type=int, default=None, help="iteration to load (default: the latest)")
    parser.add_argument("--seed", type=int, default=1234, help="sampling seed")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    with exit_on_input_error():
        if args.temperature < 0:
            raise VegaInputError("--temperature", f"must be >= 0, got {args.temperature}")
        if "[" not in args.text or not any(b in args.text for b in ("[MASK]", "[sMASK]", "[gMASK]")):
            raise VegaInputError("--text", "holds no [MASK], [sMASK] or [gMASK] blank")
        run(args)


def run(args) -> None:
    import torch

    from megatron_vega import runtime
    from megatron_vega.config import ModelConfig, ParallelConfig, inherited
    from megatron_vega.data.glm_blanks import glm_special_ids
    from megatron_vega.data.tokenizer import VegaTokenizer, check_vocab
    from megatron_vega.model.build import build_model, transformer_config
    from megatron_vega.objectives.glm_fill import encode_with_blanks, fill_blanks, filled_text
    from megatron_vega.training import checkpointing
    from megatron_vega.training.resume import checkpoint_to_load

    iteration = checkpoint_to_load(args.load, None, args.ckpt_step)
    if iteration is None:
        raise VegaInputError("--load", f"{args.load} holds no checkpoint")
    config = checkpointing.read_extra(args.load, iteration).get("config", {})
    if config.get("objective", {}).get("objective") != "glm":
        raise VegaInputError("--load", f"{args.load} was not trained with --objective glm")
    cfg = ModelConfig(**{**inherited(config["model"]), "hidden_dropout": 0.0, "attention_dropout": 0.0})
    tokenizer = VegaTokenizer(args.tokenizer_model)
    check_vocab(tokenizer, cfg.vocab_size - 4, args.tokenizer_model)
    ids = glm_special_ids(cfg.vocab_size, tokenizer)

    runtime.init_distributed()
    runtime.init_model_parallel(1, 1)
    [model] = build_model(cfg, transformer_config(cfg, ParallelConfig()))
    checkpointing.load(args.load, [model], None, None, with_optimizer=False, with_rng=False, iteration=iteration)
    model.eval()

    part_a, blanks = encode_with_blanks(tokenizer, args.text, ids)
    if len(part_a) + len(blanks) * (args.max_tokens + 1) > cfg.max_position_embeddings:
        raise VegaInputError("--max-tokens", "the text and its fills exceed the model's max_position_embeddings")
    banned = [int(i) for i in tokenizer.special_ids] + [ids.sop, ids.smask, ids.gmask]
    banned += [i for i in range(tokenizer.vocab_size, cfg.vocab_size) if i != ids.eop]
    generator = torch.Generator().manual_seed(args.seed)
    print(f"input:  {args.text}")
    for _ in range(args.num_samples if args.temperature > 0 else 1):
        fills = fill_blanks(model, part_a, blanks, ids, banned, args.max_tokens, args.temperature, generator,
                            runtime.device())
        print(f"output: {filled_text(tokenizer, part_a, blanks, fills)}", flush=True)


if __name__ == "__main__":
    main()
