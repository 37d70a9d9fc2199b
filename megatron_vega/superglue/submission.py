"""SuperGLUE leaderboard files (docs/superglue_formats.md): writers, strict readers for scoring, and the flat zip.

Predictions are {prediction key: value} dicts (keys: ``readers.prediction_keys``) holding values of the
data's label types: bool for BoolQ / WiC / WSC, 0/1 for COPA (choice index) and MultiRC (per answer), label
strings for CB / RTE / AX-b / AX-g, the answer text for ReCoRD. On disk each task has its own label spelling:
BoolQ / WiC "true"/"false", WSC "True"/"False" (as jiant writes them), COPA and MultiRC integers, others
strings. ``idx`` is written back exactly as in the data file (AX-b's are strings).
"""
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

from megatron_vega.errors import VegaInputError
from megatron_vega.superglue.readers import (
    DATA_LABELS,
    TASKS,
    Record,
    check_task,
    describe_key,
    prediction_keys,
    read_jsonl_records,
)

# On-disk label spelling per Python value, for the tasks whose spelling differs from the data's.
_BOOL_SPELLING = {
    "BoolQ": {False: "false", True: "true"},
    "WiC": {False: "false", True: "true"},
    "WSC": {False: "False", True: "True"},
}


def submission_name(task: str) -> str:
    return f"{check_task(task)}.jsonl"


def _encode(task: str, key, value):
    """The JSON label for one prediction value; a wrong type is a bug in the caller."""
    if task == "ReCoRD":
        ok = type(value) is str
    else:
        allowed = DATA_LABELS[task]
        ok = any(type(value) is type(a) and value == a for a in allowed)
    if not ok:
        raise ValueError(f"{task} prediction for {describe_key(task, key)} is {value!r}, "
                         f"not a {task} label value")
    return _BOOL_SPELLING[task][value] if task in _BOOL_SPELLING else value


def format_lines(task: str, examples, predictions: dict) -> list[str]:
    """The submission file's lines (no newlines), in data-file order; every unit must have a prediction."""
    check_task(task)
    keys = prediction_keys(task, examples, f"{task} examples")
    missing = [k for k in keys if k not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} of {len(keys)} {task} predictions missing "
                         f"(first: {describe_key(task, missing[0])})")
    if task != "MultiRC":
        return [json.dumps({"idx": k, "label": _encode(task, k, predictions[k])}) for k in keys]
    lines = []  # MultiRC: one line per passage, answers nested under their questions
    for p in examples:
        questions = []
        for q in p.questions:
            answers = []
            for a in q.answers:
                key = (p.idx, q.idx, a.idx)
                answers.append({"idx": a.idx, "label": _encode(task, key, predictions[key])})
            questions.append({"idx": q.idx, "answers": answers})
        lines.append(json.dumps({"idx": p.idx, "passage": {"questions": questions}}))
    return lines


def atomic_write_bytes(path, data: bytes, *, overwrite: bool = False) -> Path:
    """Write to a temp file in the same directory, then rename: readers never see a half-written file."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise VegaInputError(str(path), "already exists (pass --overwrite / overwrite=True to replace it)")
    if not path.parent.is_dir():
        raise VegaInputError(str(path), f"directory {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a submission file is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_predictions(task: str, examples, predictions: dict, pred_dir, *, overwrite: bool = False) -> Path:
    """Write ``<pred_dir>/<Task>.jsonl`` in the leaderboard format (creating pred_dir); returns its path."""
    lines = format_lines(task, examples, predictions)
    pred_dir = Path(pred_dir)
    pred_dir.mkdir(parents=True, exist_ok=True)
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    return atomic_write_bytes(pred_dir / submission_name(task), data, overwrite=overwrite)


def _decode(task: str, rec: Record):
    if task == "ReCoRD":
        return rec.text("label")
    if task in _BOOL_SPELLING:
        spelled = rec.choice("label", tuple(_BOOL_SPELLING[task].values()))
        return spelled == _BOOL_SPELLING[task][True]
    return rec.choice("label", DATA_LABELS[task])


def read_predictions(task: str, path) -> dict:
    """Parse a submission-format file into {prediction key: value}; any deviation from the format is an error."""
    check_task(task)
    preds, first_line = {}, {}
    for rec in read_jsonl_records(path):
        if task == "MultiRC":
            units = [((rec.idx(), q.idx(), a.idx()), _decode(task, a))
                     for q in rec.child("passage").children("questions") for a in q.children("answers")]
        else:
            units = [(rec.idx(), _decode(task, rec))]
        for key, value in units:
            if key in preds:
                raise VegaInputError(rec.where, f"second prediction for {describe_key(task, key)} "
                                                f"(first on line {first_line[key]})")
            preds[key], first_line[key] = value, rec.where.rsplit(":", 1)[1]
    return preds


def bundle(pred_dir, out_zip, *, overwrite: bool = False) -> list[str]:
    """Zip the leaderboard files present in pred_dir flat into out_zip, after checking each one's format.

    Returns the names zipped. Refuses to replace an existing out_zip unless ``overwrite``.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise VegaInputError(str(pred_dir), "no such directory")
    present = [(task, submission_name(task)) for task in TASKS if (pred_dir / submission_name(task)).is_file()]
    if not present:
        raise VegaInputError(str(pred_dir), "no SuperGLUE prediction files (expected names like "
                                            + ", ".join(submission_name(t) for t in TASKS) + ")")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for task, name in present:
            read_predictions(task, pred_dir / name)  # a malformed file would only fail on the leaderboard
            zf.write(pred_dir / name, arcname=name)
    atomic_write_bytes(out_zip, buffer.getvalue(), overwrite=overwrite)
    return [name for _, name in present]
