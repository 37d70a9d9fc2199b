"""pretrain_vega.py from outside: --dry-run for any world size, one-line errors for impossible layouts."""
import os
import subprocess
import sys

from tests.conftest import REPO


def run(*flags, world=None):
    env = dict(os.environ)
    if world:
        env["WORLD_SIZE"] = str(world)
    return subprocess.run([sys.executable, "pretrain_vega.py", *flags], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_dry_run_vega_6b_on_8_ranks():
    out = run("--model-preset", "vega-6b", "--tensor-model-parallel-size", "4", "--pipeline-model-parallel-size",
              "2", "--mock-data", "--dry-run", world=8)
    assert out.returncode == 0, out.stderr
    assert "5.43B" in out.stdout and "memory per rank" in out.stdout and "FLOPs per token" in out.stdout


def test_impossible_layouts_fail_with_one_line_naming_the_flag():
    heads = run("--model-preset", "vega-6b", "--tensor-model-parallel-size", "3", "--mock-data", "--dry-run", world=8)
    world = run("--model-preset", "vega-6b", "--tensor-model-parallel-size", "4", "--pipeline-model-parallel-size",
                "4", "--mock-data", "--dry-run", world=8)
    batch = run("--model-preset", "tiny", "--micro-batch-size", "3", "--global-batch-size", "8", "--mock-data",
                "--dry-run", world=2)
    interleaved = run("--model-preset", "tiny", "--num-layers", "4", "--pipeline-model-parallel-size", "2",
                      "--num-layers-per-virtual-pipeline-stage", "1", "--micro-batch-size", "2",
                      "--global-batch-size", "4", "--mock-data", "--dry-run", world=4)
    for out, flag in [(heads, "--tensor-model-parallel-size"), (world, "--pipeline-model-parallel-size"),
                      (batch, "--global-batch-size"), (interleaved, "--global-batch-size")]:
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {flag}"), out.stderr


def test_unknown_or_abbreviated_flag_is_rejected():
    out = run("--model-preset", "tiny", "--tensor-model-parallel", "2", "--dry-run", "--mock-data")
    assert out.returncode == 2 and "unrecognized arguments" in out.stderr


def test_existing_run_is_not_overwritten(tmp_path):
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("7\n")
    out = run("--model-preset", "tiny", "--mock-data", "--seq-length", "32", "--micro-batch-size", "2",
              "--train-iters", "1", "--save", str(tmp_path))
    assert out.returncode == 2 and "already holds a run" in out.stderr
    assert (tmp_path / "latest_checkpointed_iteration.txt").read_text() == "7\n"
