"""The layout planner (planner.py, tools/plan_training.py): which layouts, their order, the time formula, errors."""
import json
import subprocess
import sys

import pytest

from megatron_vega.config import ParallelConfig, model_preset
from megatron_vega.errors import VegaInputError
from megatron_vega.training.flops import memory_per_rank, train_flops_per_token
from megatron_vega.training.planner import plan
from tests.conftest import REPO

VEGA = model_preset("vega-6b")


def run_tool(*args):
    return subprocess.run([sys.executable, str(REPO / "tools" / "plan_training.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def test_every_valid_layout_is_listed_once():
    result = plan(VEGA, 16, 80, 989, 0.4, 1000, 64, micro_batch=1)
    keys = [(r["tp"], r["pp"], r["sequence_parallel"], r["recompute"], r["distributed_optimizer"])
            for r in result["layouts"]]
    assert len(keys) == len(set(keys)) == 114
    # TP divides the 32 heads and stays in a node of 8; PP divides the 24 layers; TP x PP divides 16
    assert {(tp, pp) for tp, pp, *_ in keys} == {(1, 1), (1, 2), (1, 4), (1, 8), (2, 1), (2, 2), (2, 4), (2, 8),
                                                  (4, 1), (4, 2), (4, 4), (8, 1), (8, 2)}
    assert not any(sp for tp, _, sp, *_ in keys if tp == 1)  # SP only with TP > 1
    assert not any(do for tp, pp, _, _, do in keys if tp * pp == 16)  # nothing to shard at DP = 1
    four_per_node = plan(VEGA, 16, 80, 989, 0.4, 1000, 64, micro_batch=1, gpus_per_node=4)
    assert max(r["tp"] for r in four_per_node["layouts"]) == 4


def test_a_row_is_memory_per_rank_and_the_pipeline_bubble():
    result = plan(VEGA, 64, 80, 312, 0.5, 1000, 256, micro_batch=2)
    row = next(r for r in result["layouts"] if (r["tp"], r["pp"], r["sequence_parallel"], r["recompute"],
                                                  r["distributed_optimizer"]) == (4, 2, True, "selective", True))
    assert row["dp"] == 8 and row["micro_batches"] == 256 // (2 * 8)
    memory = memory_per_rank(VEGA, ParallelConfig(4, 2, sequence_parallel=True, recompute_activations=True,
                                                  use_distributed_optimizer=True), 512, 2, 8, "bf16", micro_batches=16)
    assert row["memory_gib"]["total"] == pytest.approx(sum(memory.values()) / 2 ** 30)
    assert row["bubble"] == pytest.approx(1 / 16)
    assert row["hardware_flops_per_token"] > result["summary"]["train_flops_per_token"]  # the recomputed attention
    assert row["hfu_needed"] == pytest.approx(0.5 * row["hardware_flops_per_token"]
                                              / result["summary"]["train_flops_per_token"] * (1 + 1 / 16))


def test_best_first_fits_then_least_hfu_needed():
    rows = plan(VEGA, 8, 40, 312, 0.4, 1000, 64, micro_batch=4, reserve_gib=0)["layouts"]
    fits = [r["fits"] for r in rows]
    assert any(fits) and not all(fits) and fits == sorted(fits, reverse=True)
    fitting = [r for r in rows if r["fits"]]
    assert [r["hfu_needed"] for r in fitting] == sorted(r["hfu_needed"] for r in fitting)
    assert all(r["memory_gib"]["total"] <= 40 for r in fitting)
    assert all(r["memory_gib"]["total"] > 40 for r in rows if not r["fits"])
    # TP = PP = 1 with all the optimizer state on each GPU does not fit 40 GiB: 5.4B x (2 + 4 + 12) bytes
    plain = next(r for r in rows if (r["tp"], r["pp"], r["distributed_optimizer"]) == (1, 1, False))
    assert not plain["fits"] and plain["memory_gib"]["total"] > 5.4e9 * 18 / 2 ** 30


def test_time_is_steps_times_tokens_times_flops_over_gpus_peak_mfu():
    result = plan(VEGA, 320, 80, 312, 0.4, 1_000_000, 2560, seq_length=512, micro_batch=4)
    flops = train_flops_per_token(VEGA, 512, 0.15, micro_batch_size=4)
    seconds = 1_000_000 * 2560 * 512 * flops / (320 * 312e12 * 0.4)
    summary = result["summary"]
    assert summary["train_seconds"] == pytest.approx(seconds)
    assert summary["train_days"] == pytest.approx(seconds / 86400)
    assert summary["train_flops_per_step"] == pytest.approx(2560 * 512 * flops)
    # by hand: 32.2 GFLOP/token x 1.31e12 tokens / (320 x 124.8 TFLOP/s) = 12.2 days
    assert 32.0e9 < flops < 32.4e9 and summary["train_days"] == pytest.approx(12.2, abs=0.1)
    h100 = plan(VEGA, 320, 80, 989, 0.4, 1_000_000, 2560)["summary"]["train_days"]
    assert h100 == pytest.approx(summary["train_days"] * 312 / 989)


@pytest.mark.parametrize("overrides,flag", [
    (dict(gpus=0), "--gpus"), (dict(mfu=1.5), "--mfu"), (dict(mfu=0), "--mfu"),
    (dict(peak_tflops=None), "--peak-tflops"),
    (dict(global_batch=2050), "--global-batch-size"), (dict(seq_length=2), "--seq-length"),
    (dict(precision="fp8"), "--precision"), (dict(reserve_gib=80), "--reserve-gib"),
    (dict(global_batch=2048), "--global-batch-size"),  # 320 = 5 x 64: every DP has a factor 5 that 2048 lacks
])
def test_invalid_settings_name_the_flag(overrides, flag):
    args = dict(gpus=320, gpu_memory_gib=80, peak_tflops=312, mfu=0.4, train_iters=1000, global_batch=2560)
    with pytest.raises(VegaInputError) as err:
        plan(VEGA, **{**args, **overrides})
    assert err.value.where == flag


def test_tool_prints_the_table_and_json_and_fails_in_one_line():
    out = run_tool("--model-preset", "vega-6b", "--gpus", 320, "--gpu", "h100-80gb", "--global-batch-size", 2560,
                   "--top", 5)
    assert out.returncode == 0, out.stderr
    assert "peak 989 TFLOP/s" in out.stdout and "32.20 GFLOP per token" in out.stdout and "3.9 days" in out.stdout
    assert "HFU needed" in out.stdout and "more (--top 0 for all" in out.stdout
    js = run_tool("--gpus", 16, "--gpu", "a100-40gb", "--global-batch-size", 64, "--micro-batch-size", 1,
                  "--precision", "fp32", "--json")
    data = json.loads(js.stdout)
    assert data["inputs"]["peak_tflops"] == 156 and data["inputs"]["gpu_memory_gib"] == 40  # TF32: half the bf16 peak
    assert len(data["layouts"]) == 114
    bad = run_tool("--gpus", 320, "--gpu", "a100-80gb", "--global-batch-size", 2048)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --global-batch-size"), bad.stderr
    assert "nearest that is: 2060" in lines[0]
