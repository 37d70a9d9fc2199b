#!/usr/bin/env python
"""Train a sentencepiece tokenizer for megatron_vega: [PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3 [MASK]=4.

    python tools/train_tokenizer.py --input corpus.txt --vocab-size 32000 --model-prefix spm

Text files train on every non-blank line; JSONL files (.jsonl/.json) on the lines of the --json-keys values.
Writes PREFIX.model and PREFIX.vocab, byte-identical across runs for the same inputs, flags and --seed.
"""
import argparse

from megatron_vega.data.spm_training import train_tokenizer
from megatron_vega.errors import exit_on_input_error


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="text or JSONL files")
    parser.add_argument("--vocab-size", type=int, required=True, help="pieces in the model, specials included")
    parser.add_argument("--model-prefix", required=True, help="writes PREFIX.model and PREFIX.vocab")
    parser.add_argument("--model-type", choices=["unigram", "bpe"], default="unigram",
                        help="(default: unigram; HF DebertaV2Tokenizer reads only unigram models correctly)")
    parser.add_argument("--character-coverage", type=float, default=0.9995,
                        help="share of characters the pieces must cover; the rest become [UNK] (default: 0.9995)")
    parser.add_argument("--input-sentence-size", type=int, default=0,
                        help="train on a seeded sample of this many lines (default: 0 = all)")
    parser.add_argument("--seed", type=int, default=1234, help="sampling and training seed (default: 1234)")
    parser.add_argument("--json-keys", nargs="+", default=["text"], help="JSONL keys holding text (default: text)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    with exit_on_input_error():
        result = train_tokenizer(args.input, args.model_prefix, args.vocab_size, args.model_type,
                                 args.character_coverage, args.input_sentence_size, args.seed,
                                 tuple(args.json_keys))
    print(f"wrote {result.model_path} and {result.vocab_path}: {args.vocab_size} pieces from "
          f"{result.sentences} lines in {result.seconds:.1f} s")


if __name__ == "__main__":
    main()
