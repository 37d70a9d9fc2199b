"""pretrain_vega.py --objective coco-lm end to end (mock data, dropout off, SCL on), one set of launches for:
- TP=2 (DP=1) equals DP=2 (TP=1, ZeRO-1) over 4 steps: total loss, every loss term and every logged rate (the corrupted
  inputs depend on neither layout: the sampled replacements agree on the TP ranks and across layouts);
- the TP=2 checkpoint of step 2 holds both models under their global names and resumes in a fresh TP=1 process
  (resharded) with steps 3 and 4 equal to the TP=2 run's;
- the main encoder of that checkpoint exports to Hugging Face (DebertaV2Model, no missing or unexpected keys,
  encoder states within 1e-4);
- the log carries the generator, copy-head, CLM and SCL fields; PP=2 is refused in one line."""
import re

import pytest
from torch.distributed.checkpoint import FileSystemReader

from tests.launch import launch, launch_ok, one_line_error, training_log

SCRIPT = "pretrain_vega.py"
FLAGS = ("--objective", "coco-lm", "--model-preset", "tiny", "--mock-data", "--seq-length", 32,
         "--micro-batch-size", 2, "--global-batch-size", 4, "--log-interval", 1, "--lr", 1e-3, "--hidden-dropout", 0,
         "--attention-dropout", 0, "--generator-num-layers", 1, "--scl", "--mask-prob", 0.3, "--train-iters", 4)
FIELDS = ("generator loss", "copy loss", "clm loss", "scl loss", "generator accuracy", "replacement rate",
          "copy accuracy", "copy accuracy replaced", "copy accuracy original", "clm accuracy replaced", "scl accuracy",
          "original share")
RTOL = 1e-5
_FIELD = re.compile(r"\| ([a-z][a-z ]+) (-?\d+\.\d+)(?= \||$)", re.MULTILINE)


def fields_by_step(stdout: str) -> dict[int, dict[str, float]]:
    out = {}
    for line in stdout.splitlines():
        step = re.match(r"iteration\s+(\d+)/", line)
        if step:
            out[int(step[1])] = {k: float(v) for k, v in _FIELD.findall(line) if k in FIELDS}
    return out


def assert_same_steps(a: str, b: str, steps) -> None:
    loss_a, loss_b, fa, fb = training_log(a), training_log(b), fields_by_step(a), fields_by_step(b)
    for step in steps:
        assert loss_b[step]["loss"] == pytest.approx(loss_a[step]["loss"], rel=RTOL), step
        assert loss_b[step]["grad_norm"] == pytest.approx(loss_a[step]["grad_norm"], rel=1e-3), step
        for name in FIELDS:
            assert fb[step][name] == pytest.approx(fa[step][name], rel=RTOL, abs=1e-6), (step, name)


@pytest.mark.slow
def test_coco_lm_tp2_equals_dp2_resumes_at_tp1_and_refuses_pp2(tmp_path):
    tp2 = launch_ok(SCRIPT, *FLAGS, "--tensor-model-parallel-size", 2, "--save-interval", 2,
                    "--save", tmp_path / "tp2", nproc=2)
    logged = fields_by_step(tp2.stdout)
    assert sorted(logged) == [1, 2, 3, 4] and all(set(FIELDS) <= set(f) for f in logged.values())
    last = logged[4]
    assert 0 < last["replacement rate"] <= 1 and 0 < last["original share"] < 1

    dp2 = launch_ok(SCRIPT, *FLAGS, "--use-distributed-optimizer", nproc=2)  # ZeRO-1 with the shared table
    assert_same_steps(tp2.stdout, dp2.stdout, range(1, 5))

    stored = FileSystemReader(str(tmp_path / "tp2" / "iter_0000002")).read_metadata().state_dict_metadata
    assert "generator.layers.0.attention.linear_qkv.weight" in stored and "generator.lm_head.bias" in stored
    assert "generator.word_embeddings.weight" not in stored  # plain sharing: the main model's table only
    assert {"word_embeddings.weight", "copy_head.dense.weight", "clm_head.bias", "scl_head.dense.weight"} <= set(stored)

    resumed = launch_ok(SCRIPT, *FLAGS, "--load", tmp_path / "tp2", "--ckpt-step", 2, nproc=1)
    assert "loaded" in resumed.stdout and "at iteration 2" in resumed.stdout
    assert sorted(training_log(resumed.stdout)) == [3, 4]
    assert_same_steps(tp2.stdout, resumed.stdout, (3, 4))

    # the main encoder exports as DebertaV2Model (no MLM head with --clm-head projection), generator.* left out
    exported = launch_ok("tools/convert_checkpoint.py", "to-hf", "--load", tmp_path / "tp2", "--iteration", 2,
                         "--out", tmp_path / "hf", "--verify")
    assert "DebertaV2Model" in exported.stdout
    difference = float(re.search(r"largest \|encoder state difference\| vs transformers = (\S+)", exported.stdout)[1])
    assert difference < 1e-4
    from transformers import DebertaV2Model
    _, info = DebertaV2Model.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info

    refused = launch(SCRIPT, *FLAGS, "--pipeline-model-parallel-size", 2)
    assert "coco-lm trains at 1 only" in one_line_error(refused, "--pipeline-model-parallel-size")


@pytest.mark.slow
def test_coco_lm_gdes_tp2_resumes_exactly_at_tp1_and_bf16_stays_close(tmp_path):
    """--embedding-sharing gdes: the checkpoint holds E (the generator's table) and E_Δ and no main table; the TP=2
    run's step-2 checkpoint resumes in a fresh TP=1 process with steps 3 and 4 equal to TP=2's (every loss term and
    rate); a bf16 run of the same 4 steps has finite losses within 2% of fp32's."""
    gdes = (*FLAGS, "--embedding-sharing", "gdes")
    tp2 = launch_ok(SCRIPT, *gdes, "--tensor-model-parallel-size", 2, "--save-interval", 2,
                    "--save", tmp_path / "tp2", nproc=2)
    stored = FileSystemReader(str(tmp_path / "tp2" / "iter_0000002")).read_metadata().state_dict_metadata
    assert {"word_embeddings.delta.weight", "generator.word_embeddings.weight"} <= set(stored)
    assert "word_embeddings.weight" not in stored
    resumed = launch_ok(SCRIPT, *gdes, "--load", tmp_path / "tp2", "--ckpt-step", 2, nproc=1)
    assert sorted(training_log(resumed.stdout)) == [3, 4]
    assert_same_steps(tp2.stdout, resumed.stdout, (3, 4))

    bf16 = launch_ok(SCRIPT, *gdes, "--bf16", nproc=1)
    fp32_loss, bf16_loss = training_log(tp2.stdout), training_log(bf16.stdout)
    for step in range(1, 5):
        print(f"step {step}: fp32 {fp32_loss[step]['loss']:.6f} bf16 {bf16_loss[step]['loss']:.6f}")
        assert bf16_loss[step]["loss"] == pytest.approx(fp32_loss[step]["loss"], rel=0.02), step
