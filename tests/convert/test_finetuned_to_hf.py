"""to-hf / from-hf on fine-tuning checkpoints: tiny models fine-tuned by ``finetune_superglue.py`` (CB and RTE at
TP=2), exported to their transformers class, checked against transformers (logits, loading, predicted labels with
the exported tokenizer), and taken back into a fine-tuning checkpoint that reproduces the dev metric."""
import json
import shutil
import subprocess
import sys

import pytest
import torch

from megatron_vega.convert.hf_tasks import text_pairs
from tests.conftest import REPO, shared_data_dir
from tests.convert.test_convert_checkpoint import convert

SEQ_LENGTH = 64
EVAL_RECORDS = 24


def finetune(*args, tp: int = 1):
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(tp)] if tp > 1 else []
    out = subprocess.run([sys.executable, *launcher, "finetune_superglue.py", "--seq-length", str(SEQ_LENGTH),
                          "--micro-batch-size", "8", "--lr", "2e-3", "--max-eval-examples", str(EVAL_RECORDS),
                          *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Fine-tuned once per task, lazily: {task: (run directory, summary, validation file)}."""
    shared_data = shared_data_dir()
    if not shared_data.is_dir():
        pytest.skip(f"shared data not found at {shared_data}")
    root, done = tmp_path_factory.mktemp("finetuned"), {}
    spm = shared_data / "corpus" / "botchan_sp1k.model"

    def get(task: str, tp: int = 1):
        if task not in done:
            val = shared_data / "superglue" / "full" / task / "val.jsonl"
            summary = finetune("--task", task, "--model-preset", "tiny", "--tokenizer-model", spm, "--data-dir",
                               shared_data / "superglue" / "full", "--tensor-model-parallel-size", tp, "--epochs", 2,
                               "--max-train-examples", 32, "--test-file", val, "--predict", root / task / "pred",
                               "--save", root / task / "ckpt", tp=tp)
            done[task] = (root / task, summary, val)
        return done[task]
    return get


def _export(run_dir, tokenizer_flags=()):
    out = convert("to-hf", "--load", str(run_dir / "ckpt"), "--out", str(run_dir / "hf"), "--verify",
                  *tokenizer_flags)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    return lines, [float(part.split("=")[-1]) for part in lines[-1].split(";")]


def _label_text(value):
    return value if isinstance(value, str) else json.dumps(value)


def _written_labels(path):
    return [_label_text(json.loads(line)["label"]) for line in path.read_text().splitlines()]


def _check_sequence_classifier(run_dir, task, val):
    """No missing/unexpected keys; the labels transformers predicts (exported tokenizer, id2label) are the ones
    finetune_superglue.py --predict wrote; the tokenizer's pairs are the framework's ids."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model, info = AutoModelForSequenceClassification.from_pretrained(run_dir / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "hf")
    pairs = text_pairs(task, str(val))[:EVAL_RECORDS]
    batch = tokenizer([a for _, a, _ in pairs], [b for _, _, b in pairs], truncation=True, max_length=SEQ_LENGTH,
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        predicted = model.eval()(**batch).logits.argmax(-1).tolist()
    assert [model.config.id2label[i] for i in predicted] == _written_labels(run_dir / "pred" / f"{task}.jsonl")


@pytest.mark.slow
@pytest.mark.parametrize("task", ["CB", "RTE"])
def test_tp2_sequence_classifier_exports_with_labels_and_tokenizer(runs, task):
    run_dir, _, val = runs(task, tp=2)
    lines, [diff] = _export(run_dir)  # the tokenizer: the one the checkpoint records
    print(lines)
    assert "DebertaV2ForSequenceClassification" in lines[0] and diff <= 1e-4
    config = json.loads((run_dir / "hf" / "config.json").read_text())
    from megatron_vega.superglue.readers import DATA_LABELS
    assert config["id2label"] == {str(i): _label_text(v) for i, v in enumerate(DATA_LABELS[task])}
    _check_sequence_classifier(run_dir, task, val)


@pytest.mark.slow
def test_copa_exports_as_multiple_choice(runs):
    from transformers import AutoModelForMultipleChoice, AutoTokenizer
    run_dir, _, val = runs("COPA")
    lines, [diff] = _export(run_dir)
    assert "DebertaV2ForMultipleChoice" in lines[0] and diff <= 1e-4
    model, info = AutoModelForMultipleChoice.from_pretrained(run_dir / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "hf")
    pairs = text_pairs("COPA", str(val))[:2 * EVAL_RECORDS]  # two choices per question, adjacent
    batch = tokenizer([a for _, a, _ in pairs], [b for _, _, b in pairs], truncation=True, max_length=SEQ_LENGTH,
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model.eval()(**{k: v.view(EVAL_RECORDS, 2, -1) for k, v in batch.items()}).logits
    predicted = [model.config.id2label[i] for i in logits.argmax(-1).tolist()]
    assert predicted == _written_labels(run_dir / "pred" / "COPA.jsonl")


@pytest.mark.slow
def test_wic_exports_the_encoder_and_its_span_head(runs):
    from megatron_vega.convert.span_heads import load_span_head
    run_dir, _, _ = runs("WiC")
    lines, [encoder_diff, head_diff] = _export(run_dir)
    assert "DebertaV2Model" in lines[0] and "head.safetensors" in lines[0] and "README.md" in lines[0]
    assert encoder_diff <= 1e-4 and head_diff <= 1e-4
    readme = (run_dir / "hf" / "README.md").read_text()
    assert "pool(span 1)" in readme and "load_span_head" in readme
    assert load_span_head(run_dir / "hf").task == "WiC"


@pytest.mark.slow
def test_hf_classifier_back_to_a_finetuning_checkpoint_reproduces_the_dev_metric(runs, tmp_path, shared_data):
    run_dir, summary, _ = runs("CB", tp=2)
    if not (run_dir / "hf").exists():
        _export(run_dir)
    ckpt = tmp_path / "from-hf"
    out = convert("from-hf", "--hf-dir", str(run_dir / "hf"), "--save", str(ckpt), "--tensor-model-parallel-size",
                  "2")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CB encoder and head -> fine-tuning checkpoint" in out.stdout
    evaluated = finetune("--task", "CB", "--load", ckpt, "--data-dir", shared_data / "superglue" / "full",
                         "--epochs", 0)
    assert evaluated["dev"] == summary["dev"]


def test_bad_kinds_and_head_label_mismatches_are_one_line(runs, tmp_path):
    run_dir, _, _ = runs("CB", tp=2)
    if not (run_dir / "hf").exists():
        _export(run_dir)
    swapped = tmp_path.parent / f"{tmp_path.name}-swapped-labels"  # outside tmp_path: nothing may appear there
    shutil.copytree(run_dir / "hf", swapped)
    config = json.loads((swapped / "config.json").read_text())
    config["id2label"] = {"0": "contradiction", "1": "entailment", "2": "neutral"}
    (swapped / "config.json").write_text(json.dumps(config))
    cases = [("from-hf", "--hf-dir", str(swapped), "--save", str(tmp_path / "s")),
             ("from-hf", "--hf-dir", str(run_dir / "hf"), "--save", str(tmp_path / "a"), "--task", "RTE"),
             ("from-hf", "--hf-dir", str(run_dir / "hf"), "--save", str(tmp_path / "b"), "--task", "COPA"),
             ("from-hf", "--hf-dir", str(run_dir / "hf"), "--save", str(tmp_path / "c"), "--task", "AX-b"),
             ("to-hf", "--load", str(run_dir / "pred"), "--out", str(tmp_path / "d"))]
    for args in cases:
        out = convert(*args)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, (args, out.stderr[-2000:])
        assert out.stderr.startswith("error: ")
        assert not any(tmp_path.iterdir()), args
