"""--pdr and --multitask as users launch them: finetune_superglue.py in fresh processes, under torchrun at TP=2 and
DP=2 (and TP=2 in bf16). With dropout off, a parallel layout repeats the single-process run's losses: at TP=2 every
rank draws PDR's noise as the single process does; at DP=2 the ranks would draw theirs from one seed for different
micro-batches, so the DP=2 leg is the multi-task run without PDR."""
import math
import re

import pytest

from megatron_vega.errors import VegaInputError
from megatron_vega.finetune.config import FinetuneRun, OptimConfig, PdrConfig, TaskConfig
from tests.launch import launch_ok

_STEP = re.compile(r"epoch (\d+) step (\d+)/\d+ \| lr \S+ \| loss (\S+)(?: \| pdr loss (\S+))?")


def _losses(stdout: str) -> dict[tuple[int, int], tuple[float, ...]]:
    """(epoch, step) -> (task loss[, PDR loss]) from the fine-tuning log."""
    return {(int(m[1]), int(m[2])): tuple(float(x) for x in m.groups()[2:] if x is not None)
            for m in _STEP.finditer(stdout)}


@pytest.mark.slow
def test_pdr_and_multitask_launches_at_tp2_and_dp2_repeat_one_process(shared_data):
    common = ("--data-dir", shared_data / "superglue" / "full", "--tokenizer-model",
              shared_data / "corpus" / "botchan_sp1k.model", "--model-preset", "tiny", "--max-train-examples", "16",
              "--max-eval-examples", "8", "--epochs", "1", "--seq-length", "64", "--micro-batch-size", "4",
              "--global-batch-size", "8", "--lr", "1e-3", "--log-interval", "1", "--hidden-dropout", "0",
              "--attention-dropout", "0", "--cls-dropout", "0")
    pdr = ("--task", "CB", "--pdr", "--pdr-noise", "1.0", *common)
    multitask = ("--multitask", "CB,COPA", *common)
    legs = {"pdr": _losses(launch_ok("finetune_superglue.py", *pdr).stdout),
            "pdr TP=2": _losses(launch_ok("finetune_superglue.py", *pdr, "--tensor-model-parallel-size", "2",
                                          nproc=2).stdout),
            "multitask": _losses(launch_ok("finetune_superglue.py", *multitask).stdout),
            "multitask DP=2": _losses(launch_ok("finetune_superglue.py", *multitask, nproc=2).stdout),
            "multitask + pdr TP=2 bf16": _losses(launch_ok("finetune_superglue.py", *multitask, "--pdr", "--bf16",
                                                           "--pdr-noise", "1.0", "--tensor-model-parallel-size", "2",
                                                           nproc=2).stdout)}
    for name, losses in legs.items():
        print(name, losses)
        assert len(losses) == 2 if name.startswith("pdr") else len(losses) == 4, name
        assert all(math.isfinite(x) for row in losses.values() for x in row), name
    for name in ("pdr", "multitask + pdr TP=2 bf16"):
        assert all(row[1] > 0 for row in legs[name].values()), name  # the PDR term is really there
    for single, parallel in [("pdr", "pdr TP=2"), ("multitask", "multitask DP=2")]:
        assert legs[parallel].keys() == legs[single].keys()
        for step, row in legs[single].items():
            assert legs[parallel][step] == pytest.approx(row, rel=1e-5), (parallel, step)
    # bf16: the first step's task loss (the initial weights on the same batch) within bf16's precision of fp32's.
    first = min(legs["multitask"])
    assert legs["multitask + pdr TP=2 bf16"][first][0] == pytest.approx(legs["multitask"][first][0], rel=2e-2)


def test_pdr_noise_below_bf16_precision_is_refused():
    # At the default σ = 1e-5 the noisy bf16 embeddings round back to the clean ones: a PDR term of exactly 0.
    run = FinetuneRun(task=TaskConfig(task="CB", data_dir="x"), optim=OptimConfig(bf16=True),
                      pdr=PdrConfig(pdr=True), model_preset="tiny")
    with pytest.raises(VegaInputError, match="--pdr-noise: 1e-05 rounds away in bf16"):
        run.validate()
    run.pdr.pdr_noise = 0.01
    run.validate()
