"""Every SuperGLUE choice task, and generic multiple-choice JSONL, as UniMC ChoiceItems; option scores back to
leaderboard predictions (docs/unimc_and_ppt.md, "Tasks as multiple choice").

Options are listed in the order of the task's labels (``superglue.readers.DATA_LABELS``), so option k is label k:

| task | question | passage (, passage_b) | options |
|---|---|---|---|
| BoolQ | the question | the passage | no / yes |
| CB, RTE, AX-b, AX-g | (none) | the premise | "can be inferred: H" / "cannot be inferred: H" (/ "hard to infer: H") |
| COPA | "What was the cause?" / "What happened as a result?" | the premise | the two choices |
| WiC | 'Does the word "w" mean the same in both sentences?' | sentence 1, sentence 2 | no / yes |
| WSC | 'Does "pronoun" refer to "noun phrase"?' | the text | no / yes |
| MultiRC (per answer) | 'question Is "answer" a correct answer?' | the passage | no / yes |
| MC JSONL | "question" | "passage" | "options" |

NLI moves the hypothesis into the options, as UniMC's conversion does. ReCoRD is not a choice task here.
"""
import json
from pathlib import Path

from megatron_vega.errors import VegaInputError
from megatron_vega.superglue.readers import DATA_LABELS, read_examples, read_jsonl_records
from megatron_vega.superglue.scoring import evaluate
from megatron_vega.superglue.submission import atomic_write_bytes, write_predictions
from megatron_vega.unimc.config import CHOICE_TASKS, GENERIC, prediction_path
from megatron_vega.unimc.layout import ChoiceItem

NLI = {"entailment": "can be inferred: {}", "contradiction": "cannot be inferred: {}",
       "neutral": "hard to infer: {}", "not_entailment": "cannot be inferred: {}"}
NO_YES = ("no", "yes")
COPA_QUESTION = {"cause": "What was the cause?", "effect": "What happened as a result?"}


def _index(task: str, value) -> int | None:
    return None if value is None else DATA_LABELS[task].index(value)


def superglue_items(task: str, examples) -> list[tuple[object, ChoiceItem]]:
    """(prediction key, item) per scored unit, in file order."""
    if task == "BoolQ":
        return [(ex.idx, ChoiceItem(ex.question, ex.passage, NO_YES, _index(task, ex.label))) for ex in examples]
    if task in ("CB", "RTE", "AX-b", "AX-g"):
        return [(ex.idx, ChoiceItem("", ex.premise, tuple(NLI[name].format(ex.hypothesis)
                                                          for name in DATA_LABELS[task]), _index(task, ex.label)))
                for ex in examples]
    if task == "COPA":
        return [(ex.idx, ChoiceItem(COPA_QUESTION[ex.question], ex.premise, (ex.choice1, ex.choice2), ex.label))
                for ex in examples]
    if task == "WiC":
        return [(ex.idx, ChoiceItem(f'Does the word "{ex.word}" mean the same in both sentences?', ex.sentence1,
                                    NO_YES, _index(task, ex.label), ex.sentence2)) for ex in examples]
    if task == "WSC":
        return [(ex.idx, ChoiceItem(f'Does "{ex.span2_text}" refer to "{ex.span1_text}"?', ex.text, NO_YES,
                                    _index(task, ex.label))) for ex in examples]
    if task == "MultiRC":
        return [((ex.idx, q.idx, a.idx), ChoiceItem(f'{q.question} Is "{a.text}" a correct answer?', ex.passage,
                                                    NO_YES, a.label))
                for ex in examples for q in ex.questions for a in q.answers]
    raise VegaInputError("--task", f"{task} is not a UniMC choice task (one of {', '.join(CHOICE_TASKS)})")


def read_generic(path: str) -> list[dict]:
    """Generic MC JSONL; "label" is the right option's index or text (absent: unlabelled), "idx" defaults to the
    record's position in the file."""
    records = []
    for n, line in enumerate(read_jsonl_records(path)):
        rec, where = line.obj, line.where
        options = rec.get("options")
        if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
            raise VegaInputError(where, '"options" must be a list of at least two strings')
        label = rec.get("label")
        if isinstance(label, str):
            if label not in options:
                raise VegaInputError(where, f'"label" {label!r} is not one of the options')
            label = options.index(label)
        if label is not None and not (isinstance(label, int) and 0 <= label < len(options)):
            raise VegaInputError(where, f'"label" must be an option index or text, got {rec.get("label")!r}')
        records.append({"idx": rec.get("idx", n), "item": ChoiceItem(str(rec.get("question", "")),
                                                                    str(rec.get("passage", "")),
                                                                    tuple(options), label)})
    if not records:
        raise VegaInputError(path, "no record")
    return records


class ChoiceSplit:
    """One file of a task: its examples, (key, item) units, and how predictions are scored and written."""

    def __init__(self, task: str, path: str, limit: int | None = None):
        self.task, self.path = task, path
        if task == GENERIC:
            self.examples = read_generic(path)[:limit]
            self.units = [(rec["idx"], rec["item"]) for rec in self.examples]
        else:
            self.examples = read_examples(task, path)[:limit]
            self.units = superglue_items(task, self.examples)

    @property
    def items(self) -> list[ChoiceItem]:
        return [item for _, item in self.units]

    @property
    def labelled(self) -> bool:
        return all(item.label is not None for _, item in self.units)

    def predictions(self, option_scores) -> dict:
        """{key: label value} from each unit's option scores."""
        out = {}
        for (key, item), scores in zip(self.units, option_scores):
            best = max(range(len(item.options)), key=lambda k: float(scores[k]))
            if self.task in (GENERIC, "COPA", "MultiRC"):
                out[key] = best
            else:
                out[key] = DATA_LABELS[self.task][best]
        return out

    def metrics(self, predictions: dict) -> dict[str, float]:
        if self.task == GENERIC:
            right = sum(predictions[rec["idx"]] == rec["item"].label for rec in self.examples)
            return {"accuracy": right / len(self.examples)}
        return evaluate(self.task, self.examples, predictions, data_where=self.path,
                        predictions_where="UniMC predictions")

    def write(self, predictions: dict, directory: str, overwrite: bool) -> Path:
        if self.task != GENERIC:
            return write_predictions(self.task, self.examples, predictions, directory, overwrite=overwrite)
        Path(directory).mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps({"idx": k, "label": v}) + "\n" for k, v in predictions.items())
        return atomic_write_bytes(prediction_path(self.task, directory), lines.encode("utf-8"), overwrite=overwrite)
