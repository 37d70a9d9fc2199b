"""`finetune_superglue.py --format unimc` and `zero-shot` as users launch them (four short launches, the tiny
model on a few real COPA records):

* training at TP=2 (torchrun, 2 ranks) logs the same losses as at TP=1, to 1e-5 relative, and predicts the same;
* zero-shot from the checkpoint the TP=2 run saved (read back at TP=1) scores a generic multiple-choice JSONL file
  and WSC, writes their leaderboard files and prints the official metric; the checkpoint names its words and mask.
"""
import json
import re

import pytest

from tests.launch import launch_ok

LOSS = re.compile(r"^unimc epoch \d+ step (\d+)/\d+ \| lr \S+ \| loss (\S+) \| op loss (\S+) \| mlm loss (\S+)",
                  re.MULTILINE)
MC_ITEMS = [{"question": "What did he eat?", "passage": "He had bread for lunch.", "options": ["bread", "a stone"],
             "label": 0},
            {"question": "Where was she?", "passage": "She sat in the old school.", "options": ["at sea", "at school",
                                                                                             "in bed"],
             "label": "at school"},
            {"passage": "The master was angry.", "options": ["good", "bad"], "label": 1, "idx": "x"}]


def _losses(stdout: str) -> dict[int, list[float]]:
    return {int(m[1]): [float(v) for v in m.groups()[1:]] for m in LOSS.finditer(stdout)}


@pytest.mark.slow
def test_unimc_tp2_equals_tp1_and_zero_shot_from_its_checkpoint(shared_data, tmp_path):
    full, spm = shared_data / "superglue" / "full", shared_data / "corpus" / "botchan_sp1k.model"
    train = ["--format", "unimc", "--task", "COPA", "--data-dir", full, "--model-preset", "tiny",
             "--tokenizer-model", spm, "--unimc-yes", "good", "--unimc-no", "bad", "--max-train-examples", 16,
             "--max-eval-examples", 8, "--seq-length", 64, "--micro-batch-size", 8, "--epochs", 1, "--lr", 1e-3,
             "--log-interval", 1, "--hidden-dropout", 0, "--attention-dropout", 0, "--seed", 3]
    tp2 = launch_ok("finetune_superglue.py", *train, "--tensor-model-parallel-size", 2, "--save", tmp_path / "ckpt",
                    "--predict", tmp_path / "p2", nproc=2)
    tp1 = launch_ok("finetune_superglue.py", *train, "--predict", tmp_path / "p1")
    l2, l1 = _losses(tp2.stdout), _losses(tp1.stdout)
    assert sorted(l1) == [1, 2] and sorted(l2) == [1, 2], tp1.stdout
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], rel=1e-5), (step, l2[step], l1[step])
        assert l1[step][0] == pytest.approx(l1[step][1] + l1[step][2], rel=1e-5)  # loss = OP + MLM
    assert (tmp_path / "p2" / "COPA.jsonl").read_text() == (tmp_path / "p1" / "COPA.jsonl").read_text()
    assert json.loads(tp2.stdout.strip().splitlines()[-1])["dev"]["accuracy"] == \
        json.loads(tp1.stdout.strip().splitlines()[-1])["dev"]["accuracy"]

    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps(item) + "\n" for item in MC_ITEMS))
    runs = {"MC": ["--data-file", mc], "WSC": ["--data-dir", full, "--max-eval-examples", 6]}
    for task, data in runs.items():
        out = launch_ok("finetune_superglue.py", "zero-shot", "--task", task, *data, "--load", tmp_path / "ckpt",
                        "--predict", tmp_path / "zs", "--seq-length", 64)
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        assert (summary["yes"], summary["no"], summary["mask"]) == ("good", "bad", "isolated")  # from the checkpoint
        assert 0.0 <= summary["metrics"]["accuracy"] <= 1.0, summary
        written = [json.loads(line) for line in (tmp_path / "zs" / f"{task}.jsonl").read_text().splitlines()]
        assert len(written) == summary["units"] == (3 if task == "MC" else 6)
    assert [row["idx"] for row in written] == list(range(6))
    mc_rows = [json.loads(line) for line in (tmp_path / "zs" / "MC.jsonl").read_text().splitlines()]
    assert [row["idx"] for row in mc_rows] == [0, 1, "x"] and mc_rows[1]["label"] in (0, 1, 2)
