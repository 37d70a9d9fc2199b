"""Checkpoints in-process: loading into another layout, a save killed half-way. Exact resume and reshard through
the entry point in fresh processes: test_resume_launches.py."""
import json
import os
from pathlib import Path

import pytest
from torch.multiprocessing import ProcessExitedException

from tests.distributed import spawn
from tests.training.helpers import tiny_run, train_and_record


def _save_tp2(rank, world, root):
    train_and_record(rank, world, tiny_run(tp=2, iters=3, save=f"{root}/tp2", lr_decay_iters=4))
    train_and_record(rank, world, tiny_run(tp=2, iters=4, save=f"{root}/tp2-cont", load=f"{root}/tp2",
                                           lr_decay_iters=4), f"{root}/tp2.json")


def _load_pp2(rank, world, root):
    train_and_record(rank, world, tiny_run(pp=2, iters=4, save=f"{root}/pp2", load=f"{root}/tp2", lr_decay_iters=4),
                     f"{root}/pp2.json")


@pytest.mark.slow
def test_checkpoint_saved_at_tp2_loads_at_pp2(tmp_path):
    spawn(_save_tp2, 2, str(tmp_path))
    spawn(_load_pp2, 2, str(tmp_path))
    tp2 = json.loads((tmp_path / "tp2.json").read_text())
    pp2 = json.loads((tmp_path / "pp2.json").read_text())
    print(f"step 4 after reload: continued at TP=2 {tp2['4']:.8f}, resharded to PP=2 {pp2['4']:.8f}")
    assert pp2["4"] == pytest.approx(tp2["4"], rel=1e-5)


def _killed_during_save(rank, world, root):
    from megatron.core import dist_checkpointing
    real_save = dist_checkpointing.save
    calls = []

    def dying_save(state, directory, *args, **kwargs):
        calls.append(directory)
        if len(calls) == 2:  # the second checkpoint: write part of it, then die
            Path(directory, "half-written").write_text("x")
            os._exit(17)
        return real_save(state, directory, *args, **kwargs)

    dist_checkpointing.save = dying_save
    train_and_record(rank, world, tiny_run(iters=4, save=f"{root}/run", save_interval=2))


def _load_after_kill(rank, world, root):
    train_and_record(rank, world, tiny_run(iters=3, save=f"{root}/run", load=f"{root}/run", lr_decay_iters=4),
                     f"{root}/after.json")


@pytest.mark.slow
def test_killed_save_leaves_previous_checkpoint_as_latest(tmp_path):
    with pytest.raises(ProcessExitedException, match="exit code 17"):  # the rank died mid-save (os._exit(17))
        spawn(_killed_during_save, 1, str(tmp_path))
    run = tmp_path / "run"
    assert (run / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert (run / "iter_0000004.tmp").exists() and not (run / "iter_0000004").exists()
    spawn(_load_after_kill, 1, str(tmp_path))
    assert list(json.loads((tmp_path / "after.json").read_text())) == ["3"]  # resumed from iteration 2
