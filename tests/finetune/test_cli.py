"""`finetune_superglue.py` as a user runs it: bad input is one `error:` line and exit code 2; `--dry-run` checks
the layout against WORLD_SIZE without reading anything."""
import json
import os
import subprocess
import sys

from tests.conftest import REPO


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, str(REPO / "finetune_superglue.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _one_line_error(result, where: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {where}"), result.stderr


def test_flag_errors():
    _one_line_error(_run("--task", "CB", "--model-preset", "tiny", "--data-dir", "x",
                         "--pipeline-model-parallel-size", "2"), "--pipeline-model-parallel-size")
    _one_line_error(_run("--task", "CB", "--data-dir", "x"), "--load")


def test_bad_training_file(tmp_path, spm_path, superglue):
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"premise": "a", "hypothesis": "b", "label": "maybe", "idx": 0}) + "\n")
    result = _run("--task", "CB", "--model-preset", "tiny", "--tokenizer-model", spm_path, "--train-file", train,
                  "--dev-file", superglue / "full" / "CB" / "val.jsonl")
    _one_line_error(result, f"{train}:1")
    assert "maybe" in result.stderr


def _dry_run(world, *args, cwd=REPO):
    env = {**os.environ, "WORLD_SIZE": str(world)}
    return subprocess.run([sys.executable, str(REPO / "finetune_superglue.py"), *map(str, args), "--dry-run"],
                          capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def test_dry_run_prints_the_layout_and_reads_nothing(tmp_path):
    missing = tmp_path / "missing"  # none of these exist: a dry run neither reads nor creates them
    result = _dry_run(16, "--task", "RTE", "--data-dir", missing / "superglue", "--load", missing / "ckpt",
                      "--save", missing / "out", "--predict", missing / "preds", "--tensor-model-parallel-size", 4,
                      "--micro-batch-size", 2, "--global-batch-size", 32, "--sift", "--transductive-rounds", 1,
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "layout: world 16 = TP 4 x PP 1 x DP 4; global batch 32 = 4 micro-batches x 2 x DP 4" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_dry_run_default_world_is_one():
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "SLURM_NTASKS")}
    args = ["--task", "CB", "--data-dir", "x", "--model-preset", "tiny", "--dry-run"]
    ok = subprocess.run([sys.executable, str(REPO / "finetune_superglue.py"), *args], capture_output=True,
                        text=True, timeout=300, cwd=REPO, env=env)
    assert ok.returncode == 0 and "layout: world 1 = TP 1 x PP 1 x DP 1" in ok.stdout, ok.stderr
    bad = subprocess.run([sys.executable, str(REPO / "finetune_superglue.py"), *args,
                          "--tensor-model-parallel-size", "2"], capture_output=True, text=True, timeout=300,
                         cwd=REPO, env=env)
    _one_line_error(bad, "--tensor-model-parallel-size")


def test_dry_run_bad_layouts():
    base = ("--task", "CB", "--data-dir", "x", "--model-preset", "tiny")
    # TP must divide the world, the tiny model's 4 heads, and the global batch must split over DP.
    _one_line_error(_dry_run(6, *base, "--tensor-model-parallel-size", 4), "--tensor-model-parallel-size")
    _one_line_error(_dry_run(8, *base, "--tensor-model-parallel-size", 8), "--tensor-model-parallel-size")
    _one_line_error(_dry_run(8, *base, "--tensor-model-parallel-size", 2, "--micro-batch-size", 3,
                             "--global-batch-size", 16), "--global-batch-size")
    # Flag errors come first, exactly as without --dry-run.
    _one_line_error(_dry_run(8, *base, "--pipeline-model-parallel-size", 2), "--pipeline-model-parallel-size")
    _one_line_error(_dry_run(8, "--task", "CB", "--data-dir", "x"), "--load")


def test_unimc_and_zero_shot_dry_runs(tmp_path):
    unimc = ("--format", "unimc", "--task", "RTE", "--unimc-extra-tasks", "WiC", "WSC", "--data-dir", "x",
             "--load", "y", "--tensor-model-parallel-size", 2, "--micro-batch-size", 4, "--global-batch-size", 16)
    result = _dry_run(4, *unimc)
    assert result.returncode == 0, result.stderr
    assert "layout: world 4 = TP 2 x PP 1 x DP 2; global batch 16 = 2 micro-batches x 4 x DP 2" in result.stdout
    assert "UniMC (yes 'yes', no 'no', mask isolated, text MLM on, with WiC WSC)" in result.stdout
    _one_line_error(_dry_run(4, *unimc, "--sift"), "--sift: not with --format unimc")
    _one_line_error(_dry_run(4, *unimc[:3], "ReCoRD", *unimc[4:]), "--task: ReCoRD is not a choice task")
    zero_shot = ("zero-shot", "--task", "COPA", "--data-dir", tmp_path / "none", "--load", tmp_path / "ckpt",
                 "--predict", tmp_path / "out", "--tensor-model-parallel-size", 2)
    result = _dry_run(4, *zero_shot)
    assert result.returncode == 0, result.stderr
    assert "layout: world 4 = TP 2 x PP 1 x DP 2" in result.stdout and "COPA/val.jsonl" in result.stdout
    assert list(tmp_path.iterdir()) == []  # nothing read, nothing written
    _one_line_error(_dry_run(3, *zero_shot), "--tensor-model-parallel-size")
