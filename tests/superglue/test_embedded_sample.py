"""The embedded RTE sample: deterministic, balanced, split by document, in the official schema the readers take."""
import json
import subprocess
import sys

import pytest

from megatron_vega.errors import VegaInputError
from megatron_vega.superglue.embedded_sample import LABELS, rte_sample, write_rte_sample
from megatron_vega.superglue.readers import read_examples
from tests.conftest import REPO

SIZES = {"train": 40, "val": 12, "test": 12}


def _corpus(n_docs=40, per_doc=6):
    """Documents of one-sentence paragraphs whose words are all distinct (d3s1k4: document 3, sentence 1, word 4)."""
    return [{"title": f"doc {d}", "text": "\n".join(
        " ".join(f"d{d}s{s}k{k}" for k in range(12 + s)).capitalize() + "." for s in range(per_doc))}
        for d in range(n_docs)]


def _words(text: str) -> str:
    return text.rstrip(".").lower()


def test_sample_is_deterministic_balanced_and_split_by_document():
    docs = _corpus()
    sample = rte_sample(docs, SIZES, seed=0)
    assert sample == rte_sample(docs, SIZES, seed=0)
    assert sample != rte_sample(docs, SIZES, seed=1)
    premises = {}
    for split, records in sample.items():
        assert len(records) == SIZES[split] and [r["idx"] for r in records] == list(range(SIZES[split]))
        assert sorted(r["label"] for r in records) == sorted(LABELS * (SIZES[split] // 2))
        for r in records:
            contained = _words(r["hypothesis"]) in r["premise"].lower()
            assert contained == (r["label"] == "entailment"), r
            assert 5 <= len(r["hypothesis"].split()) <= 12 and r["hypothesis"][0].isupper()
        premises[split] = {r["premise"] for r in records}
    assert not premises["train"] & premises["val"] and not premises["train"] & premises["test"]


def test_written_files_follow_the_superglue_schema(tmp_path):
    target = write_rte_sample(tmp_path / "superglue", _corpus(), SIZES)
    assert target == tmp_path / "superglue" / "RTE"
    assert sorted(p.name for p in target.iterdir()) == ["test.jsonl", "train.jsonl", "val.jsonl"]
    for split, name in (("train", "train.jsonl"), ("val", "val.jsonl")):
        examples = read_examples("RTE", target / name)
        assert len(examples) == SIZES[split] and all(ex.label in LABELS for ex in examples)
    test_lines = [json.loads(line) for line in (target / "test.jsonl").read_text().splitlines()]
    assert all(set(rec) == {"premise", "hypothesis", "idx"} for rec in test_lines)
    assert [ex.label for ex in read_examples("RTE", target / "test.jsonl")] == [None] * SIZES["test"]
    with pytest.raises(VegaInputError, match="already exists"):
        write_rte_sample(tmp_path / "superglue", _corpus(), SIZES)


def test_too_small_corpus_is_an_input_error(tmp_path):
    with pytest.raises(VegaInputError, match="too small"):
        write_rte_sample(tmp_path, _corpus(n_docs=8), SIZES)
    assert list(tmp_path.iterdir()) == []


def test_command_line_on_the_embedded_corpus(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    run = [sys.executable, "-m"]
    subprocess.run([*run, "megatron_vega.data.embedded_corpus", "--output", str(corpus)], check=True, cwd=REPO,
                   capture_output=True)
    out = subprocess.run([*run, "megatron_vega.superglue.embedded_sample", "--corpus", str(corpus), "--output-dir",
                          str(tmp_path / "a")], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and "train 512, val 128, test 128" in out.stdout, out.stderr
    # Built in memory without --corpus: the same files.
    subprocess.run([*run, "megatron_vega.superglue.embedded_sample", "--output-dir", str(tmp_path / "b")],
                   check=True, cwd=REPO, capture_output=True)
    for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
        assert (tmp_path / "a" / "RTE" / name).read_bytes() == (tmp_path / "b" / "RTE" / name).read_bytes()
    again = subprocess.run([*run, "megatron_vega.superglue.embedded_sample", "--corpus", str(corpus),
                            "--output-dir", str(tmp_path / "a")], cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.startswith("error: ") and len(again.stderr.splitlines()) == 1
