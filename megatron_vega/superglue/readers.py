"""Read the official SuperGLUE JSONL files (docs/superglue_formats.md) into small frozen dataclasses.

Labels are optional (test and "unlabeled" files have none: ``label`` is then None). Every problem in a file
raises VegaInputError naming ``<file>:<line>`` and the field, so entry points print one line and exit 2.
``idx`` values are kept exactly as in the file (AX-b stores them as strings) because submissions echo them back.
"""
import json
from dataclasses import dataclass
from pathlib import Path

from megatron_vega.errors import VegaInputError

TASKS = ("BoolQ", "CB", "COPA", "MultiRC", "ReCoRD", "RTE", "WiC", "WSC", "AX-b", "AX-g")

# Label values exactly as they appear in the JSON files (type included: JSON true is not the integer 1).
# ReCoRD has no closed label set: its gold labels are answer strings.
DATA_LABELS = {
    "BoolQ": (False, True),
    "CB": ("entailment", "contradiction", "neutral"),
    "COPA": (0, 1),
    "MultiRC": (0, 1),
    "RTE": ("entailment", "not_entailment"),
    "WiC": (False, True),
    "WSC": (False, True),
    "AX-b": ("entailment", "not_entailment"),
    "AX-g": ("entailment", "not_entailment"),
}


@dataclass(frozen=True)
class BoolQExample:
    idx: int | str
    passage: str
    question: str
    label: bool | None


@dataclass(frozen=True)
class PairExample:
    """CB, RTE, AX-b (whose sentence1/sentence2 become premise/hypothesis) and AX-g."""
    idx: int | str
    premise: str
    hypothesis: str
    label: str | None
    pair_id: int | None = None  # AX-g only


@dataclass(frozen=True)
class COPAExample:
    idx: int | str
    premise: str
    choice1: str
    choice2: str
    question: str  # "cause" or "effect"
    label: int | None  # 0 = choice1 is correct, 1 = choice2


@dataclass(frozen=True)
class MultiRCAnswer:
    idx: int | str
    text: str
    label: int | None  # 1 = this answer option is correct


@dataclass(frozen=True)
class MultiRCQuestion:
    idx: int | str
    question: str
    answers: tuple[MultiRCAnswer, ...]


@dataclass(frozen=True)
class MultiRCExample:
    idx: int | str  # the passage's idx
    passage: str
    questions: tuple[MultiRCQuestion, ...]


@dataclass(frozen=True)
class ReCoRDQuery:
    idx: int | str
    query: str  # contains "@placeholder" exactly where the answer entity goes
    answers: tuple[str, ...] | None  # gold answer texts; None when unlabelled


@dataclass(frozen=True)
class ReCoRDExample:
    idx: int | str
    passage: str
    entities: tuple[tuple[int, int], ...]  # (start, end) char offsets, end INCLUSIVE as in the file
    queries: tuple[ReCoRDQuery, ...]


@dataclass(frozen=True)
class WiCExample:
    idx: int | str
    word: str
    sentence1: str
    sentence2: str
    start1: int  # char offsets of the word in each sentence, end exclusive
    end1: int
    start2: int
    end2: int
    label: bool | None


@dataclass(frozen=True)
class WSCExample:
    idx: int | str
    text: str
    span1_index: int  # whitespace-token index of the candidate noun phrase
    span1_text: str
    span2_index: int  # whitespace-token index of the pronoun
    span2_text: str
    label: bool | None


def _show(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


class Record:
    """One JSON object read from one line; every accessor names file, line and field path when it fails."""

    def __init__(self, obj, where: str, prefix: str = ""):
        if not isinstance(obj, dict):
            raise VegaInputError(where, f"'{prefix.rstrip('.') or 'line'}' must be a JSON object, got {_show(obj)}")
        self.obj, self.where, self.prefix = obj, where, prefix

    def has(self, key: str) -> bool:
        return self.obj.get(key) is not None

    def _get(self, key: str, kinds: tuple, kind_name: str):
        if not self.has(key):
            raise VegaInputError(self.where, f"missing field '{self.prefix}{key}'")
        value = self.obj[key]
        if type(value) not in kinds:  # exact type: bool must not pass as int
            raise VegaInputError(self.where, f"field '{self.prefix}{key}' must be {kind_name}, got {_show(value)}")
        return value

    def text(self, key: str) -> str:
        return self._get(key, (str,), "a string")

    def integer(self, key: str) -> int:
        return self._get(key, (int,), "an integer")

    def idx(self, key: str = "idx") -> int | str:
        return self._get(key, (int, str), "an integer or a string")

    def child(self, key: str) -> "Record":
        return Record(self._get(key, (dict,), "a JSON object"), self.where, f"{self.prefix}{key}.")

    def children(self, key: str) -> list["Record"]:
        items = self._get(key, (list,), "a JSON list")
        return [Record(item, self.where, f"{self.prefix}{key}[{i}].") for i, item in enumerate(items)]

    def choice(self, key: str, allowed: tuple, optional: bool = False):
        """A value from a closed set (labels, COPA's question); None if absent and optional."""
        if optional and not self.has(key):
            return None
        value = self._get(key, (bool, int, str, float, list, dict), "a JSON value")
        if not any(type(value) is type(a) and value == a for a in allowed):  # JSON true is not 1
            raise VegaInputError(self.where, f"unknown value {_show(value)} in field '{self.prefix}{key}' "
                                             f"(expected {' or '.join(_show(a) for a in allowed)})")
        return value


def read_jsonl_records(path) -> list[Record]:
    """The non-blank lines of a JSONL file as Records; bad JSON or encoding names the file and line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise VegaInputError(str(path), "no such file") from None
    except OSError as err:
        raise VegaInputError(str(path), f"cannot read: {err.strerror}") from None
    records = []
    for number, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            raise VegaInputError(where, "not UTF-8 text") from None
        except json.JSONDecodeError as err:
            raise VegaInputError(where, f"bad JSON: {err.msg} (column {err.colno})") from None
        records.append(Record(obj, where))
    return records


def _check_span(rec: Record, start: int, end: int, length: int, what: str) -> None:
    if not 0 <= start < end <= length:
        raise VegaInputError(rec.where, f"{what} ({start}, {end}) is not a non-empty span of a text of length {length}")


def _boolq(rec: Record) -> BoolQExample:
    return BoolQExample(rec.idx(), rec.text("passage"), rec.text("question"),
                        rec.choice("label", DATA_LABELS["BoolQ"], optional=True))


def _pair(task: str, rec: Record) -> PairExample:
    first, second = ("sentence1", "sentence2") if task == "AX-b" else ("premise", "hypothesis")
    return PairExample(rec.idx(), rec.text(first), rec.text(second),
                       rec.choice("label", DATA_LABELS[task], optional=True),
                       rec.integer("pair_id") if task == "AX-g" else None)


def _copa(rec: Record) -> COPAExample:
    return COPAExample(rec.idx(), rec.text("premise"), rec.text("choice1"), rec.text("choice2"),
                       rec.choice("question", ("cause", "effect")),
                       rec.choice("label", DATA_LABELS["COPA"], optional=True))


def _multirc(rec: Record) -> MultiRCExample:
    passage = rec.child("passage")
    questions = tuple(
        MultiRCQuestion(q.idx(), q.text("question"), tuple(
            MultiRCAnswer(a.idx(), a.text("text"), a.choice("label", DATA_LABELS["MultiRC"], optional=True))
            for a in q.children("answers")))
        for q in passage.children("questions"))
    return MultiRCExample(rec.idx(), passage.text("text"), questions)


def _record(rec: Record) -> ReCoRDExample:
    passage = rec.child("passage")
    text = passage.text("text")
    entities = []
    for ent in passage.children("entities"):
        start, end = ent.integer("start"), ent.integer("end")
        _check_span(ent, start, end + 1, len(text), f"entity '{ent.prefix.rstrip('.')}' (end inclusive)")
        entities.append((start, end))
    queries = []
    for q in rec.children("qas"):
        query = q.text("query")
        if "@placeholder" not in query:
            raise VegaInputError(q.where, f"field '{q.prefix}query' has no @placeholder")
        # Test files carry no answers; an empty list cannot be scored either, so both mean "unlabelled".
        answers = tuple(a.text("text") for a in q.children("answers")) if q.has("answers") else ()
        queries.append(ReCoRDQuery(q.idx(), query, answers or None))
    return ReCoRDExample(rec.idx(), text, tuple(entities), tuple(queries))


def _wic(rec: Record) -> WiCExample:
    s1, s2 = rec.text("sentence1"), rec.text("sentence2")
    start1, end1, start2, end2 = (rec.integer(k) for k in ("start1", "end1", "start2", "end2"))
    _check_span(rec, start1, end1, len(s1), "start1/end1")
    _check_span(rec, start2, end2, len(s2), "start2/end2")
    return WiCExample(rec.idx(), rec.text("word"), s1, s2, start1, end1, start2, end2,
                      rec.choice("label", DATA_LABELS["WiC"], optional=True))


def _wsc(rec: Record) -> WSCExample:
    text = rec.text("text")
    target = rec.child("target")
    n_tokens = len(text.split())
    indices = {}
    for k in ("span1_index", "span2_index"):
        indices[k] = target.integer(k)
        if not 0 <= indices[k] < n_tokens:
            raise VegaInputError(rec.where, f"field 'target.{k}' = {indices[k]} is outside the text's "
                                            f"{n_tokens} whitespace tokens")
    return WSCExample(rec.idx(), text, indices["span1_index"], target.text("span1_text"),
                      indices["span2_index"], target.text("span2_text"),
                      rec.choice("label", DATA_LABELS["WSC"], optional=True))


_PARSERS = {
    "BoolQ": _boolq, "COPA": _copa, "MultiRC": _multirc, "ReCoRD": _record, "WiC": _wic, "WSC": _wsc,
    "CB": lambda rec: _pair("CB", rec), "RTE": lambda rec: _pair("RTE", rec),
    "AX-b": lambda rec: _pair("AX-b", rec), "AX-g": lambda rec: _pair("AX-g", rec),
}


def check_task(task: str) -> str:
    if task not in TASKS:
        raise VegaInputError("--task", f"unknown SuperGLUE task {task!r} (expected one of {', '.join(TASKS)})")
    return task


def read_examples(task: str, path) -> list:
    """Every record of one task's JSONL file, in file order."""
    parse = _PARSERS[check_task(task)]
    return [parse(rec) for rec in read_jsonl_records(path)]


def prediction_keys(task: str, examples, where: str) -> list:
    """The keys a task's predictions are indexed by, in file order (each must be unique).

    The example's idx for most tasks; (passage idx, question idx, answer idx) for MultiRC; the query's idx
    for ReCoRD. ``where`` names the data for the duplicate-idx error.
    """
    if task == "MultiRC":
        keys = [(p.idx, q.idx, a.idx) for p in examples for q in p.questions for a in q.answers]
    elif task == "ReCoRD":
        keys = [q.idx for ex in examples for q in ex.queries]
    else:
        keys = [ex.idx for ex in examples]
    seen = set()
    for key in keys:
        if key in seen:
            raise VegaInputError(where, f"duplicate {describe_key(task, key)}: predictions are matched by idx, "
                                        "so it must be unique")
        seen.add(key)
    return keys


def gold_labels(task: str, examples) -> dict:
    """Gold label per prediction key, for the labelled units only (ReCoRD: the tuple of answer texts)."""
    if task == "MultiRC":
        units = (((p.idx, q.idx, a.idx), a.label) for p in examples for q in p.questions for a in q.answers)
    elif task == "ReCoRD":
        units = ((q.idx, q.answers) for ex in examples for q in ex.queries)
    else:
        units = ((ex.idx, ex.label) for ex in examples)
    return {key: label for key, label in units if label is not None}


def describe_key(task: str, key) -> str:
    if task == "MultiRC":
        return "passage idx {} question idx {} answer idx {}".format(*(json.dumps(k) for k in key))
    return f"{'query ' if task == 'ReCoRD' else ''}idx {json.dumps(key)}"


def label_texts(task: str) -> list[str]:
    """Class i's name, in the order the framework's logits index them, spelled as the task's JSON spells the
    label value (``true``/``false``, ``0``/``1``, strings as they are). COPA: the index of the chosen choice;
    ReCoRD: (no, yes) for 'this mention is the answer'."""
    if task == "ReCoRD":
        return ["false", "true"]
    return [value if isinstance(value, str) else json.dumps(value) for value in DATA_LABELS[task]]
