"""Model-independent instances for every SuperGLUE task (docs/superglue_formats.md).

An Instance is what one classifier call sees: text segment(s), a class index into ``label_names(task)``, and
char spans for span heads. Tokenisation, truncation and special tokens belong to the model code.

* BoolQ: (passage, question). CB / RTE / AX-b / AX-g: (premise, hypothesis).
* COPA, MultiRC, ReCoRD are *option* tasks: one binary instance per option (class 1 = "this option is right"),
  instances of one question share ``group``; ``predictions_from_scores`` picks the best option per group
  (COPA, ReCoRD) or thresholds each option (MultiRC).
* COPA ``copa_style="deberta"`` (default, DeBERTa's COPATask): cause -> (choice, premise), effect ->
  (premise, choice), so text_a always happens first, as in the MNLI pairs COPA is initialised from.
  ``copa_style="connective"`` (P-tuning/PANDA): ("premise because" | "premise so", choice).
* MultiRC: (passage, question + " " + answer) per answer option, grouped by (passage idx, question idx).
* ReCoRD: one instance per distinct candidate entity text of the passage (jiant style); text_b is the query
  with ``@placeholder`` left in (span heads put [MASK] there; filling models substitute ``option``); ``spans``
  are all of the candidate's mentions, so a group's spans are every entity mention (DeBERTa's span head).
* WiC: (sentence1, sentence2), spans = the word in each sentence.
* WSC: (text,), spans = (span1 candidate NP, span2 pronoun), located from the whitespace-token indices.
All spans are end-EXCLUSIVE char offsets (ReCoRD's end-inclusive entity offsets are converted here).
"""
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from megatron_vega.superglue.readers import DATA_LABELS, check_task

OPTION_TASKS = ("COPA", "MultiRC", "ReCoRD")
COPA_STYLES = ("deberta", "connective")


@dataclass(frozen=True)
class Span:
    segment: int  # 0 = text_a, 1 = text_b
    start: int
    end: int  # exclusive


@dataclass(frozen=True)
class Instance:
    task: str
    key: Hashable  # the prediction key this instance contributes to (see readers.prediction_keys)
    text_a: str
    text_b: str | None
    label: int | None  # index into label_names(task); None when the file has no labels
    group: Hashable | None = None  # option tasks: instances answering the same question
    option: int | str | None = None  # COPA: choice index 0/1; ReCoRD: the candidate entity text
    spans: tuple[Span, ...] = ()


def label_names(task: str) -> tuple:
    """The classes an instance's label indexes: the data's label values, or (False, True) for option tasks."""
    check_task(task)
    if task in OPTION_TASKS:
        return (False, True)
    return DATA_LABELS[task]


def label_index(task: str, value) -> int:
    """Class index of a data label value (exact type: True is not 1)."""
    for i, name in enumerate(label_names(task)):
        if type(name) is type(value) and name == value:
            return i
    raise ValueError(f"{value!r} is not a {task} label (expected one of {label_names(task)})")


def _index(task: str, value) -> int | None:
    return None if value is None else label_index(task, value)


def _binary(correct: bool | None) -> int | None:
    return None if correct is None else int(correct)


def wsc_char_span(text: str, token_index: int, span_text: str) -> tuple[int, int]:
    """Char span of a WSC span given its whitespace-token index.

    Covers as many tokens as ``span_text`` has, then trims trailing characters the span text does not include
    (the data has "him," for "him"); if the tokens do not start with the span text (a few noisy records), the
    whole-token span is kept because the index, not the text, is what the task defines.
    """
    tokens = [m.span() for m in re.finditer(r"\S+", text)]
    last = min(token_index + max(len(span_text.split()), 1), len(tokens)) - 1
    start, end = tokens[token_index][0], tokens[last][1]
    if text[start:end].lower().startswith(span_text.lower()):
        end = start + len(span_text)
    return start, end


def _copa(ex, style: str) -> list[Instance]:
    out = []
    for k, choice in enumerate((ex.choice1, ex.choice2)):
        if style == "deberta":
            a, b = (choice, ex.premise) if ex.question == "cause" else (ex.premise, choice)
        else:
            a, b = f"{ex.premise} {'because' if ex.question == 'cause' else 'so'}", choice
        correct = None if ex.label is None else k == ex.label
        out.append(Instance("COPA", ex.idx, a, b, _binary(correct), group=ex.idx, option=k))
    return out


def _multirc(ex) -> list[Instance]:
    return [Instance("MultiRC", (ex.idx, q.idx, a.idx), ex.passage, f"{q.question} {a.text}", a.label,
                     group=(ex.idx, q.idx))
            for q in ex.questions for a in q.answers]


def _record(ex) -> list[Instance]:
    mentions: dict[str, list[Span]] = {}  # candidate text -> its mentions, in order of first appearance
    for start, end in sorted(set(ex.entities)):
        mentions.setdefault(ex.passage[start:end + 1], []).append(Span(0, start, end + 1))
    out = []
    for q in ex.queries:
        for text, spans in mentions.items():
            correct = None if q.answers is None else text in q.answers
            out.append(Instance("ReCoRD", q.idx, ex.passage, q.query, _binary(correct), group=q.idx,
                                option=text, spans=tuple(spans)))
    return out


def _instances(task: str, ex, copa_style: str) -> list[Instance]:
    if task == "BoolQ":
        return [Instance(task, ex.idx, ex.passage, ex.question, _index(task, ex.label))]
    if task in ("CB", "RTE", "AX-b", "AX-g"):
        return [Instance(task, ex.idx, ex.premise, ex.hypothesis, _index(task, ex.label))]
    if task == "COPA":
        return _copa(ex, copa_style)
    if task == "MultiRC":
        return _multirc(ex)
    if task == "ReCoRD":
        return _record(ex)
    if task == "WiC":
        spans = (Span(0, ex.start1, ex.end1), Span(1, ex.start2, ex.end2))
        return [Instance(task, ex.idx, ex.sentence1, ex.sentence2, _index(task, ex.label), spans=spans)]
    # WSC
    spans = tuple(Span(0, *wsc_char_span(ex.text, i, t))
                  for i, t in ((ex.span1_index, ex.span1_text), (ex.span2_index, ex.span2_text)))
    return [Instance(task, ex.idx, ex.text, None, _index(task, ex.label), spans=spans)]


def build_instances(task: str, examples, *, copa_style: str = "deberta") -> list[Instance]:
    """All instances of a task's examples, in file order (options of one group are adjacent)."""
    check_task(task)
    if copa_style not in COPA_STYLES:
        raise ValueError(f"copa_style must be one of {COPA_STYLES}, got {copa_style!r}")
    return [inst for ex in examples for inst in _instances(task, ex, copa_style)]


def predictions_from_scores(task: str, instances: Sequence[Instance], scores) -> dict:
    """Turn per-instance class scores (logits or probabilities, shape [n, len(label_names)]) into predictions.

    Returns {prediction key: value} in the data's label types, ready for ``submission.write_predictions`` and
    ``scoring.evaluate``. COPA / ReCoRD take, per group, the option with the largest s[1] - s[0] (monotone in
    P(right) for a 2-way softmax); ties go to the first option.
    """
    if len(scores) != len(instances):
        raise ValueError(f"{len(scores)} score rows for {len(instances)} instances")
    names = label_names(task)
    if task in ("COPA", "ReCoRD"):
        best: dict = {}
        for inst, s in zip(instances, scores):
            margin = float(s[1]) - float(s[0])
            if inst.group not in best or margin > best[inst.group][0]:
                best[inst.group] = (margin, inst.option)
        return {group: option for group, (_, option) in best.items()}
    preds = {}
    for inst, s in zip(instances, scores):
        top = max(range(len(names)), key=lambda i: float(s[i]))
        preds[inst.key] = int(top) if task == "MultiRC" else names[top]
    return preds
