"""Issue 16, check 2: an objective registered from outside the package (tests/objectives/toy_objective.py: a
second model with its own head and loss, a combined loss) trains through pretrain_vega.py's main at TP=2 and at
PP=2; its checkpoint, written at TP=2, loads at PP=2 and the losses go on as the TP=2 run's; its prefixed size
flags are in --help."""
import re

import pytest
from torch.distributed.checkpoint import FileSystemReader

from tests.launch import launch_ok, training_log

SCRIPT = "tests/objectives/run_toy_pretraining.py"
FLAGS = ("--objective", "toy", "--model-preset", "tiny", "--mock-data", "--seq-length", 32, "--micro-batch-size", 2,
         "--global-batch-size", 4, "--log-interval", 1, "--lr", 1e-3, "--hidden-dropout", 0,
         "--attention-dropout", 0, "--generator-num-layers", 2, "--generator-hidden-size", 32)
RTOL = 1e-5
_GENERATOR_LOSS = re.compile(r"^iteration\s+(\d+)/.*\| generator loss (\S+)", re.MULTILINE)


def _generator_losses(stdout: str) -> dict[int, float]:
    return {int(m[1]): float(m[2]) for m in _GENERATOR_LOSS.finditer(stdout)}


def test_toy_size_flags_in_help():
    shown = launch_ok(SCRIPT, "--help").stdout
    assert "--generator-num-layers" in shown and "--generator-hidden-size" in shown
    assert re.search(r"--objective \{[^}]*\btoy\b", shown)


@pytest.mark.slow
def test_toy_trains_at_tp2_and_its_checkpoint_goes_on_at_pp2(tmp_path):
    tp2 = launch_ok(SCRIPT, *FLAGS, "--tensor-model-parallel-size", 2, "--train-iters", 6, "--save-interval", 3,
                    "--save", tmp_path / "tp2", nproc=2)
    tp2_log, tp2_generator = training_log(tp2.stdout), _generator_losses(tp2.stdout)
    assert sorted(tp2_log) == sorted(tp2_generator) == list(range(1, 7))
    assert tp2_generator[6] < tp2_generator[1]  # the generator learns (its head starts at chance, ln 2)

    stored = FileSystemReader(str(tmp_path / "tp2" / "iter_0000003")).read_metadata().state_dict_metadata
    assert any(k.startswith("generator.layers.1.") for k in stored)  # global layer indices under the prefix
    assert "generator.masked_position_head.classifier.weight" in stored
    assert "lm_head.dense.weight" in stored and "word_embeddings.weight" in stored  # the main model's names

    pp2 = launch_ok(SCRIPT, *FLAGS, "--pipeline-model-parallel-size", 2, "--train-iters", 6,
                    "--load", tmp_path / "tp2", "--ckpt-step", 3, "--save", tmp_path / "pp2", nproc=2)
    assert "loaded" in pp2.stdout and "at iteration 3" in pp2.stdout
    pp2_log, pp2_generator = training_log(pp2.stdout), _generator_losses(pp2.stdout)
    assert sorted(pp2_log) == sorted(pp2_generator) == [4, 5, 6]
    for step in (4, 5, 6):
        assert pp2_log[step]["loss"] == pytest.approx(tp2_log[step]["loss"], rel=RTOL), step
        assert pp2_log[step]["grad_norm"] == pytest.approx(tp2_log[step]["grad_norm"], rel=1e-3), step
        assert pp2_generator[step] == pytest.approx(tp2_generator[step], rel=RTOL), step
