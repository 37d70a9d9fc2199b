"""The README's main job, shortened: embedded corpus -> tokenizer -> indexed data -> tiny pretraining at
TP=2 x PP=2 on four gloo processes (the MLM loss must fall) -> self-evolution -> SuperGLUE fine-tuning at TP=2 on
the embedded RTE sample, whose leaderboard file must cover the test split -> Hugging Face export and reload."""
import json
import os
import re
import subprocess

import pytest

from megatron_vega.superglue.readers import read_examples
from megatron_vega.superglue.submission import read_predictions
from tests.conftest import REPO


@pytest.mark.slow
def test_quickstart_runs_and_loss_falls(tmp_path):
    run_dir = tmp_path / "quickstart"
    # tools/run_tests.sh has installed the project just before (and a test must not re-point the environment's
    # editable install at whichever checkout runs it).
    out = subprocess.run(["bash", "examples/quickstart.sh", "--steps", "30", "--run-dir", str(run_dir)], cwd=REPO,
                         env=dict(os.environ, VEGA_SKIP_INSTALL="1"), capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    losses = [float(x) for x in re.findall(r"\| loss ([0-9.]+)", (run_dir / "pretrain.log").read_text())]
    print(out.stdout[-1200:])
    assert len(losses) >= 3 and losses[-1] < losses[0] - 0.3, losses
    assert (run_dir / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "30"
    assert re.search(r"summary", out.stdout)
    # Self-evolution: the validation MLM loss before and after stage 2, on the same batches.
    assert re.search(r"self-evolution stage 2 \(10 steps\): NLL [0-9.]+ on the mined positions; validation MLM loss "
                     r"[0-9.]+ before, [0-9.]+ after", out.stdout), out.stdout[-2000:]

    # Fine-tuning: a leaderboard file with exactly one valid label per test record, and a dev score.
    predictions = read_predictions("RTE", run_dir / "predictions" / "RTE.jsonl")  # raises on any format error
    test = read_examples("RTE", run_dir / "superglue" / "RTE" / "test.jsonl")
    assert len(test) == 128 and set(predictions) == {ex.idx for ex in test}
    assert set(predictions.values()) <= {"entailment", "not_entailment"}
    summary = [json.loads(line) for line in (run_dir / "finetune.log").read_text().splitlines()
               if line.startswith('{"task"')][-1]
    assert summary["task"] == "RTE" and 0.0 <= summary["dev"]["accuracy"] <= 1.0
    assert re.search(r"SuperGLUE RTE fine-tuning \(the embedded sample, TP=2, .*\): dev accuracy [0-9.]+", out.stdout)
    assert "transformers reloaded" in out.stdout
