#!/usr/bin/env python
"""Tokenize text or JSONL into a megatron-core indexed dataset (PREFIX.bin + PREFIX.idx) for --data-path.

    python tools/preprocess_data.py --input corpus.txt --output-prefix data/corpus \\
        --tokenizer-model spm.model --workers 8

Plain text: one document per paragraph (lines separated by blank lines). JSONL (.jsonl/.json): one document per
line, the --json-keys values joined by a newline. Progress goes to stderr; both files appear only on success.
"""
import argparse

from megatron_vega.data.preprocess import preprocess
from megatron_vega.errors import exit_on_input_error


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="a text or JSONL file")
    parser.add_argument("--output-prefix", required=True, help="writes PREFIX.bin and PREFIX.idx")
    parser.add_argument("--tokenizer-model", required=True, help="sentencepiece .model (tools/train_tokenizer.py)")
    parser.add_argument("--workers", type=int, required=True, help="tokenizer processes")
    parser.add_argument("--json-keys", nargs="+", default=["text"], help="JSONL keys holding text (default: text)")
    parser.add_argument("--log-interval", type=int, default=1000,
                        help="report progress every this many documents; 0 = never (default: 1000)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    with exit_on_input_error():
        result = preprocess(args.input, args.output_prefix, args.tokenizer_model, args.workers,
                            tuple(args.json_keys), args.log_interval)
    print(f"wrote {args.output_prefix}.bin/.idx: {result.documents} documents, {result.tokens} tokens in "
          f"{result.seconds:.2f} s ({result.tokens_per_second:,.0f} tokens/s, "
          f"{result.text_bytes / result.seconds / 1e6:.2f} MB/s of text, {args.workers} workers)")


if __name__ == "__main__":
    main()
