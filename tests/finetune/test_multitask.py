"""MT-DNN multi-task fine-tuning: the task sampler (shares, determinism, no mixed batch), bad task lists, and the
two stages end to end in process (multi-task with leaderboard files and a checkpoint, then one task from it with
its head kept). The DP=2 check is in test_robust_distributed.py."""
import subprocess
import sys

import numpy as np
import pytest

from megatron_vega.errors import VegaInputError
from megatron_vega.finetune.config import FinetuneRun, MultitaskConfig, TaskConfig
from megatron_vega.finetune.multitask import TaskStream, batches_per_epoch, task_schedule
from tests.conftest import REPO
from tests.finetune.conftest import tiny_run


def test_temperature_one_is_mt_dnn_shuffled_list():
    batches = batches_per_epoch([250, 2490, 400], 16)
    assert batches == [16, 156, 25]
    for epoch in (1, 2):
        schedule = task_schedule(batches, 1.0, seed=3, epoch=epoch)
        assert np.bincount(schedule).tolist() == batches  # every batch of every task exactly once
    assert task_schedule(batches, 1.0, 3, 1).tolist() == task_schedule(batches, 1.0, 3, 1).tolist()
    assert task_schedule(batches, 1.0, 3, 1).tolist() != task_schedule(batches, 1.0, 3, 2).tolist()


@pytest.mark.parametrize("temperature", [2.0, 0.5])
def test_tempered_shares_match_the_rule(temperature):
    batches = [16, 156, 25]
    weights = np.array(batches, dtype=float) ** (1 / temperature)
    expected = weights / weights.sum()
    counts = sum(np.bincount(task_schedule(batches, temperature, 3, epoch), minlength=3) for epoch in range(1, 51))
    n = 50 * sum(batches)
    sigma = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(counts / n - expected) < 4 * sigma), (counts / n, expected)


def test_task_stream_batches_one_task_and_covers_it():
    stream = TaskStream(size=20, global_batch=8, seed=3, task_index=1)
    batches = [stream.next_batch() for _ in range(5)]  # 40 indices: two full passes over 20 samples
    assert all(len(b) == 8 and b.max() < 20 for b in batches)
    seen = np.concatenate(batches)
    assert sorted(seen[:20].tolist()) == list(range(20)) and sorted(seen[20:].tolist()) == list(range(20))


@pytest.mark.parametrize("tasks, problem", [("CB,RTX,COPA", "unknown task 'RTX'"), ("CB,RTE,CB", "CB is listed twice"),
                                            ("CB", "needs at least two tasks")])
def test_bad_task_lists(tasks, problem):
    run = FinetuneRun(task=TaskConfig(data_dir="x"), multitask=MultitaskConfig(multitask=tasks), model_preset="tiny")
    with pytest.raises(VegaInputError, match=problem):
        run.validate()


def test_bad_task_list_is_one_line_naming_it():
    result = subprocess.run([sys.executable, str(REPO / "finetune_superglue.py"), "--multitask", "CB,WiC,CB",
                             "--data-dir", "x", "--model-preset", "tiny"], capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert result.returncode == 2 and result.stderr.strip() == "error: --multitask: CB is listed twice"


@pytest.mark.slow
def test_multitask_then_single_task_from_it(world_of_one, superglue, spm_path, tmp_path):
    from megatron_vega.finetune.multitask_run import finetune_multitask
    from megatron_vega.finetune.run import finetune
    from megatron_vega.superglue.submission import read_predictions

    full = str(superglue / "full")
    optim = {"epochs": 2, "seq_length": 64, "micro_batch_size": 4}
    run = tiny_run("", spm_path, data_dir=full, max_train_examples=16, max_eval_examples=8,
                   predict=str(tmp_path / "mt"), save=str(tmp_path / "ckpt"), optim=optim)
    run.multitask = MultitaskConfig(multitask="CB,COPA")
    run.pdr.pdr, run.pdr.pdr_noise = True, 0.1
    summary = finetune_multitask(run)
    assert set(summary["dev"]) == {"CB", "COPA"}
    assert summary["steps_per_task"] == {"CB": 4 * summary["epoch"], "COPA": 4 * summary["epoch"]}
    assert summary["mean_dev"] == pytest.approx((sum(summary["dev"]["CB"].values()) / 2
                                                 + summary["dev"]["COPA"]["accuracy"]) / 2, abs=1e-6)
    assert sorted(p.name for p in (tmp_path / "mt").iterdir()) == ["CB.jsonl", "COPA.jsonl"]
    assert len(read_predictions("COPA", tmp_path / "mt" / "COPA.jsonl")) == 8
    # Second stage: CB from the multi-task checkpoint, its head kept (no training: the dev score is the same).
    stage2 = tiny_run("CB", None, data_dir=full, max_eval_examples=8, load=str(tmp_path / "ckpt"),
                      predict=str(tmp_path / "cb"), optim={**optim, "epochs": 0})
    stage2.model_preset = None
    single = finetune(stage2)
    assert single["dev"] == summary["dev"]["CB"]
    assert (tmp_path / "cb" / "CB.jsonl").read_text() == (tmp_path / "mt" / "CB.jsonl").read_text()
