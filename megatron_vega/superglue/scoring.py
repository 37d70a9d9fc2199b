"""Score SuperGLUE predictions with the official metrics, and the ``score`` / ``bundle`` subcommands.

    python finetune_superglue.py score --task CB --data-file val.jsonl --predictions CB.jsonl
    python finetune_superglue.py bundle --predictions-dir preds/ --output submission.zip

Metric names: ``accuracy`` (BoolQ, COPA, RTE, WiC, WSC); CB ``f1`` (macro over 3 classes) and ``accuracy``;
MultiRC ``f1a`` and ``em``; ReCoRD ``f1`` and ``em``; AX-b ``mcc``; AX-g ``accuracy`` and ``gender_parity``.
All are fractions in [0, 1] (the leaderboard shows x100).
"""
import argparse
import json
import sys

from megatron_vega.errors import VegaInputError, exit_on_input_error
from megatron_vega.superglue import metrics
from megatron_vega.superglue.readers import (
    DATA_LABELS,
    TASKS,
    describe_key,
    gold_labels,
    prediction_keys,
    read_examples,
)
from megatron_vega.superglue.submission import bundle, read_predictions


def _axg_pairs(examples, where: str) -> None:
    """AX-g minimal pairs are consecutive records (male then female premise) sharing the hypothesis;
    the file's pair_id is unique per record, so order, not pair_id, defines the pairs."""
    if len(examples) % 2:
        raise VegaInputError(where, f"AX-g needs an even number of records for gender parity, got {len(examples)}")
    for first, second in zip(examples[::2], examples[1::2]):
        if first.hypothesis != second.hypothesis:
            raise VegaInputError(where, f"AX-g records idx {json.dumps(first.idx)} and {json.dumps(second.idx)} "
                                        "are consecutive but do not share a hypothesis, so they are not a pair")


def evaluate(task: str, examples, predictions: dict, *, data_where: str = "data",
             predictions_where: str = "predictions") -> dict[str, float]:
    """Official metrics of ``predictions`` ({prediction key: value}, see submission.py) against ``examples``.

    Every unit of the data must be labelled and predicted, and every prediction must belong to the data.
    The ``*_where`` strings name the two sources in error messages.
    """
    keys = prediction_keys(task, examples, data_where)
    golds = gold_labels(task, examples)
    unlabelled = [k for k in keys if k not in golds]
    if unlabelled:
        raise VegaInputError(data_where, f"{len(unlabelled)} of {len(keys)} units have no gold label "
                                         f"(first: {describe_key(task, unlabelled[0])}); score a labelled file")
    missing = [k for k in keys if k not in predictions]
    if missing:
        raise VegaInputError(predictions_where, f"{len(missing)} of {len(keys)} predictions missing "
                                                f"(first: {describe_key(task, missing[0])})")
    extra = [k for k in predictions if k not in golds]
    if extra:
        raise VegaInputError(predictions_where, f"{len(extra)} predictions are for units not in {data_where} "
                                                f"(first: {describe_key(task, extra[0])})")
    preds, gold = [predictions[k] for k in keys], [golds[k] for k in keys]
    if task == "CB":
        return {"f1": metrics.macro_f1(preds, gold, DATA_LABELS["CB"]), "accuracy": metrics.accuracy(preds, gold)}
    if task == "MultiRC":
        f1a, em = metrics.multirc_f1a_em(preds, gold, [k[:2] for k in keys])
        return {"f1a": f1a, "em": em}
    if task == "ReCoRD":
        em, f1 = metrics.record_em_f1(preds, gold)
        return {"f1": f1, "em": em}
    if task == "AX-b":
        return {"mcc": metrics.matthews_corrcoef(preds, gold, "entailment")}
    if task == "AX-g":
        _axg_pairs(examples, data_where)
        return {"accuracy": metrics.accuracy(preds, gold), "gender_parity": metrics.gender_parity(preds)}
    return {"accuracy": metrics.accuracy(preds, gold)}


def score(task: str, data_file, predictions_file) -> dict[str, float]:
    """Score a submission-format predictions file against a labelled data file of the same task."""
    examples = read_examples(task, data_file)
    predictions = read_predictions(task, predictions_file)
    return evaluate(task, examples, predictions, data_where=str(data_file), predictions_where=str(predictions_file))


def _run_score(args) -> int:
    print(json.dumps(score(args.task, args.data_file, args.predictions)))
    return 0


def _run_bundle(args) -> int:
    names = bundle(args.predictions_dir, args.output, overwrite=args.overwrite)
    print(f"wrote {args.output} with {len(names)} file(s): {' '.join(names)}")
    return 0


def add_subcommands(subparsers) -> None:
    """Register ``score`` and ``bundle`` on an argparse subparsers object (each sets ``func``)."""
    p = subparsers.add_parser("score", allow_abbrev=False,
                              help="score a predictions file (leaderboard format) against a labelled data file")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--data-file", required=True, help="labelled SuperGLUE JSONL file, e.g. val.jsonl")
    p.add_argument("--predictions", required=True, help="predictions in the leaderboard format, e.g. CB.jsonl")
    p.set_defaults(func=_run_score)
    p = subparsers.add_parser("bundle", allow_abbrev=False,
                              help="zip the leaderboard files of a directory flat into a submission zip")
    p.add_argument("--predictions-dir", required=True, help="directory holding BoolQ.jsonl, CB.jsonl, ...")
    p.add_argument("--output", required=True, help="zip file to write, e.g. submission.zip")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.set_defaults(func=_run_bundle)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="finetune_superglue.py", allow_abbrev=False,
                                     description="SuperGLUE scoring and submission bundling.")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    with exit_on_input_error():
        return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
