"""`finetune_superglue.py score|bundle` as a user runs it: one JSON object, or one error line and exit code 2."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CB_DATA = ('{"premise": "p", "hypothesis": "h", "label": "entailment", "idx": 0}\n'
           '{"premise": "p", "hypothesis": "h", "label": "contradiction", "idx": 1}\n'
           '{"premise": "p", "hypothesis": "h", "label": "neutral", "idx": 2}\n')
CB_PREDS = ('{"idx": 0, "label": "entailment"}\n{"idx": 1, "label": "neutral"}\n'
            '{"idx": 2, "label": "neutral"}\n')


def run(*args):
    return subprocess.run([sys.executable, str(REPO / "finetune_superglue.py"), *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def score(task, data, preds):
    return run("score", "--task", task, "--data-file", data, "--predictions", preds)


def one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_score_prints_one_json_object(tmp_path):
    result = score("CB", write(tmp_path / "val.jsonl", CB_DATA), write(tmp_path / "CB.jsonl", CB_PREDS))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    out = json.loads(result.stdout)
    assert list(out) == ["f1", "accuracy"]
    # entailment F1 1, contradiction F1 0, neutral: tp 1 fp 1 -> 2/3
    assert out["f1"] == (1 + 0 + 2 / 3) / 3 and out["accuracy"] == 2 / 3


def test_score_multirc_metric_names(tmp_path):
    data = ('{"idx": 0, "passage": {"text": "t", "questions": [{"idx": 0, "question": "q", "answers": '
            '[{"idx": 0, "text": "a", "label": 1}, {"idx": 1, "text": "b", "label": 0}]}]}}\n')
    preds = ('{"idx": 0, "passage": {"questions": [{"idx": 0, "answers": [{"idx": 0, "label": 1}, '
             '{"idx": 1, "label": 0}]}]}}\n')
    result = score("MultiRC", write(tmp_path / "val.jsonl", data), write(tmp_path / "MultiRC.jsonl", preds))
    assert json.loads(result.stdout) == {"f1a": 1.0, "em": 1.0}


def test_missing_predictions_say_how_many_and_which_first(tmp_path):
    preds = write(tmp_path / "CB.jsonl", '{"idx": 0, "label": "entailment"}\n')
    line = one_error_line(score("CB", write(tmp_path / "val.jsonl", CB_DATA), preds))
    assert line == f"error: {preds}: 2 of 3 predictions missing (first: idx 1)"


def test_data_missing_field_names_file_line_field(tmp_path):
    data = write(tmp_path / "val.jsonl", CB_DATA + '{"premise": "p", "label": "neutral", "idx": 3}\n')
    line = one_error_line(score("CB", data, write(tmp_path / "CB.jsonl", CB_PREDS)))
    assert line == f"error: {data}:4: missing field 'hypothesis'"


def test_unknown_label_and_bad_json(tmp_path):
    data = write(tmp_path / "val.jsonl", CB_DATA.replace('"neutral"', '"unsure"'))
    line = one_error_line(score("CB", data, write(tmp_path / "CB.jsonl", CB_PREDS)))
    assert line.startswith(f"error: {data}:3: unknown value \"unsure\" in field 'label'")
    preds = write(tmp_path / "bad.jsonl", CB_PREDS + '{"idx": 3, "label": \n')
    line = one_error_line(score("CB", write(tmp_path / "ok.jsonl", CB_DATA), preds))
    assert line.startswith(f"error: {preds}:4: bad JSON")


def test_bundle_subcommand(tmp_path):
    preds = tmp_path / "preds"
    preds.mkdir()
    write(preds / "CB.jsonl", CB_PREDS)
    out = tmp_path / "submission.zip"
    result = run("bundle", "--predictions-dir", preds, "--output", out)
    assert result.returncode == 0, result.stderr
    assert out.is_file()
    line = one_error_line(run("bundle", "--predictions-dir", preds, "--output", out))
    assert line.startswith(f"error: {out}: already exists")
    assert run("bundle", "--predictions-dir", preds, "--output", out, "--overwrite").returncode == 0
