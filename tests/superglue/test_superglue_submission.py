"""Leaderboard files byte for byte (docs/superglue_formats.md), strict reading back, and the flat submission zip."""
import zipfile

import pytest

from megatron_vega.errors import VegaInputError
from megatron_vega.superglue.readers import (
    BoolQExample,
    COPAExample,
    MultiRCAnswer,
    MultiRCExample,
    MultiRCQuestion,
    PairExample,
    ReCoRDExample,
    ReCoRDQuery,
    WiCExample,
    WSCExample,
)
from megatron_vega.superglue.submission import bundle, read_predictions, submission_name, write_predictions

MULTIRC = [MultiRCExample(0, "P0", (MultiRCQuestion(0, "q", (MultiRCAnswer(0, "a", None), MultiRCAnswer(1, "b", None))),
                                    MultiRCQuestion(1, "q", (MultiRCAnswer(2, "c", None),)))),
           MultiRCExample(1, "P1", (MultiRCQuestion(2, "q", (MultiRCAnswer(3, "d", None),)),))]

# task -> (examples, predictions, exact file content)
GOLDEN = {
    "BoolQ": ([BoolQExample(0, "p", "q", None), BoolQExample(1, "p", "q", None)], {0: True, 1: False},
              '{"idx": 0, "label": "true"}\n{"idx": 1, "label": "false"}\n'),
    "CB": ([PairExample(0, "p", "h", None), PairExample(1, "p", "h", None)], {0: "entailment", 1: "neutral"},
           '{"idx": 0, "label": "entailment"}\n{"idx": 1, "label": "neutral"}\n'),
    "COPA": ([COPAExample(0, "p", "a", "b", "cause", None), COPAExample(1, "p", "a", "b", "effect", None)],
             {0: 1, 1: 0}, '{"idx": 0, "label": 1}\n{"idx": 1, "label": 0}\n'),
    "MultiRC": (MULTIRC, {(0, 0, 0): 0, (0, 0, 1): 1, (0, 1, 2): 1, (1, 2, 3): 0},
                '{"idx": 0, "passage": {"questions": [{"idx": 0, "answers": [{"idx": 0, "label": 0}, '
                '{"idx": 1, "label": 1}]}, {"idx": 1, "answers": [{"idx": 2, "label": 1}]}]}}\n'
                '{"idx": 1, "passage": {"questions": [{"idx": 2, "answers": [{"idx": 3, "label": 0}]}]}}\n'),
    "ReCoRD": ([ReCoRDExample(5, "Ann met Bob.", ((0, 2), (8, 10)),
                              (ReCoRDQuery(19617, "@placeholder", None), ReCoRDQuery(19618, "@placeholder", None)))],
               {19617: "Ann", 19618: "Bob"},
               '{"idx": 19617, "label": "Ann"}\n{"idx": 19618, "label": "Bob"}\n'),
    "RTE": ([PairExample(0, "p", "h", None)], {0: "not_entailment"}, '{"idx": 0, "label": "not_entailment"}\n'),
    "WiC": ([WiCExample(0, "w", "w.", "w!", 0, 1, 0, 1, None), WiCExample(1, "w", "w.", "w!", 0, 1, 0, 1, None)],
            {0: False, 1: True}, '{"idx": 0, "label": "false"}\n{"idx": 1, "label": "true"}\n'),
    "WSC": ([WSCExample(0, "A it", 0, "A", 1, "it", None), WSCExample(1, "A it", 0, "A", 1, "it", None)],
            {0: True, 1: False}, '{"idx": 0, "label": "True"}\n{"idx": 1, "label": "False"}\n'),
    "AX-b": ([PairExample("0", "s1", "s2", None), PairExample("1", "s1", "s2", None)],
             {"0": "entailment", "1": "not_entailment"},
             '{"idx": "0", "label": "entailment"}\n{"idx": "1", "label": "not_entailment"}\n'),
    "AX-g": ([PairExample(0, "p", "h", None, 3), PairExample(1, "p", "h", None, 5)],
             {0: "not_entailment", 1: "entailment"},
             '{"idx": 0, "label": "not_entailment"}\n{"idx": 1, "label": "entailment"}\n'),
}


@pytest.mark.parametrize("task", sorted(GOLDEN))
def test_writer_matches_golden_and_reads_back(tmp_path, task):
    examples, predictions, content = GOLDEN[task]
    path = write_predictions(task, examples, predictions, tmp_path)
    assert path == tmp_path / f"{task}.jsonl" == tmp_path / submission_name(task)
    assert path.read_bytes() == content.encode()
    assert read_predictions(task, path) == predictions
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


def test_writer_refuses_overwrite_and_checks_values(tmp_path):
    examples, predictions, _ = GOLDEN["BoolQ"]
    write_predictions("BoolQ", examples, predictions, tmp_path)
    with pytest.raises(VegaInputError, match="already exists"):
        write_predictions("BoolQ", examples, {0: False, 1: False}, tmp_path)
    write_predictions("BoolQ", examples, {0: False, 1: False}, tmp_path, overwrite=True)
    assert read_predictions("BoolQ", tmp_path / "BoolQ.jsonl") == {0: False, 1: False}
    with pytest.raises(ValueError, match="not a BoolQ label"):
        write_predictions("BoolQ", examples, {0: "true", 1: False}, tmp_path / "x")
    with pytest.raises(ValueError, match="not a COPA label"):
        write_predictions("COPA", GOLDEN["COPA"][0], {0: True, 1: 0}, tmp_path / "x")
    with pytest.raises(ValueError, match="1 of 2 BoolQ predictions missing"):
        write_predictions("BoolQ", examples, {0: True}, tmp_path / "x")


@pytest.mark.parametrize("task,line,problem", [
    ("BoolQ", '{"idx": 0, "label": true}', 'unknown value true'),
    ("WSC", '{"idx": 0, "label": "true"}', 'unknown value "true"'),
    ("WiC", '{"idx": 0, "label": "True"}', 'unknown value "True"'),
    ("COPA", '{"idx": 0, "label": "1"}', 'unknown value "1"'),
    ("CB", '{"idx": 0}', "missing field 'label'"),
    ("MultiRC", '{"idx": 0, "passage": {"questions": [{"idx": 0, "answers": [{"idx": 0, "label": 2}]}]}}',
     "unknown value 2 in field 'passage.questions[0].answers[0].label'"),
])
def test_reader_is_strict_about_the_format(tmp_path, task, line, problem):
    path = tmp_path / "preds.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(VegaInputError) as info:
        read_predictions(task, path)
    assert info.value.where == f"{path}:1" and problem in info.value.problem


def test_reader_rejects_duplicate_idx(tmp_path):
    path = tmp_path / "preds.jsonl"
    path.write_text('{"idx": 4, "label": 1}\n{"idx": 5, "label": 1}\n{"idx": 4, "label": 0}\n')
    with pytest.raises(VegaInputError) as info:
        read_predictions("COPA", path)
    assert info.value.where == f"{path}:3" and info.value.problem == "second prediction for idx 4 (first on line 1)"


def test_bundle_zips_present_files_flat(tmp_path):
    preds = tmp_path / "preds"
    for task in ("CB", "AX-b"):
        write_predictions(task, GOLDEN[task][0], GOLDEN[task][1], preds)
    (preds / "notes.txt").write_text("not part of a submission")
    out = tmp_path / "submission.zip"
    assert bundle(preds, out) == ["CB.jsonl", "AX-b.jsonl"]
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == ["CB.jsonl", "AX-b.jsonl"]
        assert zf.read("AX-b.jsonl") == GOLDEN["AX-b"][2].encode()
    with pytest.raises(VegaInputError, match="already exists"):
        bundle(preds, out)
    assert bundle(preds, out, overwrite=True) == ["CB.jsonl", "AX-b.jsonl"]
    (preds / "RTE.jsonl").write_text('{"idx": 0, "label": "yes"}\n')
    with pytest.raises(VegaInputError, match="RTE.jsonl:1"):
        bundle(preds, tmp_path / "other.zip")
    assert not (tmp_path / "other.zip").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(VegaInputError, match="no SuperGLUE prediction files"):
        bundle(tmp_path / "empty", tmp_path / "third.zip")
