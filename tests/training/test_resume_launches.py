"""Save, resume and reshard through pretrain_vega.py as users run them: every leg its own launch (fresh processes,
torchrun), dropout on, across the options training accepts. A resumed leg must repeat the straight run's losses,
learning rates and grad norms exactly: anything a checkpoint forgets (an RNG, the optimizer's main parameters or
moments, the loss scaler, the data position) shows up in the first steps after the resume."""
import pytest

from tests.launch import launch, launch_ok, one_line_error, training_log

COMMON = ("--model-preset", "tiny", "--num-layers", "4", "--seq-length", "64", "--micro-batch-size", "2",
          "--global-batch-size", "8", "--mock-data", "--seed", "7", "--lr", "1e-3", "--lr-warmup-iters", "1",
          "--lr-decay-iters", "6", "--clip-grad", "0.5", "--log-interval", "1", "--save-interval", "3")

# Each option appears at least once; TP, PP and DP > 1 each appear among the cases; each case runs on 4 ranks. Both
# CPU attention cores (--attention-backend, docs/attention.md) resume exactly at TP=2: cpu in fp32, sdpa in bf16.
CASES = {
    "tp2-pp2-full-recompute": ("--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
                               "--recompute-granularity", "full", "--attention-backend", "cpu"),
    # The vega-6b recipe's option set (examples/pretrain_vega6b.sh) at a tiny size, on the sdpa core.
    "tp2-dp2-vega6b-options": ("--tensor-model-parallel-size", "2", "--sequence-parallel",
                               "--use-distributed-optimizer", "--recompute-activations", "--bf16",
                               "--attention-backend", "sdpa"),
    "pp2-dp2-interleaved-fp16": ("--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage",
                                 "1", "--use-distributed-optimizer", "--fp16"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_in_fresh_processes_repeats_the_straight_run(tmp_path, case):
    straight = training_log(launch_ok("pretrain_vega.py", *COMMON, *CASES[case], "--train-iters", "6",
                                      "--save", tmp_path / "straight", nproc=4).stdout)
    resumed_run = launch_ok("pretrain_vega.py", *COMMON, *CASES[case], "--train-iters", "6", "--load",
                            tmp_path / "straight", "--ckpt-step", "3", "--save", tmp_path / "resumed", nproc=4)
    resumed = training_log(resumed_run.stdout)
    print(f"{case}\nstep  straight loss / grad norm   resumed loss / grad norm")
    for step in sorted(resumed):
        print(f"{step:>4}  {straight[step]['loss']:.6f} / {straight[step]['grad_norm']:.3f}   "
              f"{resumed[step]['loss']:.6f} / {resumed[step]['grad_norm']:.3f}")
    assert "loaded" in resumed_run.stdout and "RNG states not restored" not in resumed_run.stdout
    backend = dict(zip(CASES[case], CASES[case][1:])).get("--attention-backend")
    if backend:  # the core asked for is the one that ran
        assert f"attention core {backend}" in resumed_run.stdout
    assert sorted(resumed) == [4, 5, 6]
    for step, row in resumed.items():
        assert row == straight[step], step  # bit-identical: same layout, same state


def test_reshard_continues_as_loading_the_original_at_the_new_layout(tmp_path):
    flags = COMMON + ("--use-distributed-optimizer",)
    launch_ok("pretrain_vega.py", *flags, "--tensor-model-parallel-size", "2", "--train-iters", "3",
              "--save", tmp_path / "tp2", nproc=2)
    reshard = launch_ok("tools/convert_checkpoint.py", "reshard", "--load", tmp_path / "tp2", "--save",
                        tmp_path / "r12", "--tensor-model-parallel-size", "1", "--pipeline-model-parallel-size", "2")
    assert "carried weights, optimizer state" in reshard.stdout and "RNG states not carried" in reshard.stdout
    legs = {}
    for name, source in [("resharded", "r12"), ("direct", "tp2")]:
        out = launch_ok("pretrain_vega.py", *flags, "--pipeline-model-parallel-size", "2", "--train-iters", "5",
                        "--load", tmp_path / source, "--save", tmp_path / f"{name}-cont", nproc=2).stdout
        assert "loaded" in out and " at iteration 3" in out
        legs[name] = training_log(out)
    print(legs)
    assert sorted(legs["resharded"]) == [4, 5]
    assert legs["resharded"] == legs["direct"]


@pytest.mark.slow
def test_schedule_and_load_mistakes_stop_in_one_line(tmp_path):
    run = ("--model-preset", "tiny", "--seq-length", "32", "--micro-batch-size", "2", "--mock-data",
           "--log-interval", "1")
    ckpt = tmp_path / "run"
    launch_ok("pretrain_vega.py", *run, "--train-iters", "3", "--save", ckpt)
    # Extending --train-iters: the restored schedule would decay to lr 0 at step 3.
    line = one_line_error(launch("pretrain_vega.py", *run, "--train-iters", "6", "--load", ckpt, "--save", ckpt),
                          "--train-iters")
    assert "lr_decay_steps = 3" in line and "6" in line and "--override-opt-param-scheduler" in line
    extended = training_log(launch_ok("pretrain_vega.py", *run, "--train-iters", "6", "--load", ckpt, "--save",
                                      tmp_path / "extended", "--override-opt-param-scheduler").stdout)
    assert sorted(extended) == [4, 5, 6] and extended[4]["lr"] > 0 and extended[6]["lr"] == 0
    kept = training_log(launch_ok("pretrain_vega.py", *run, "--train-iters", "5", "--load", ckpt, "--save",
                                  tmp_path / "kept", "--use-checkpoint-opt-param-scheduler").stdout)
    assert [kept[i]["lr"] for i in (4, 5)] == [0.0, 0.0]  # the checkpoint's schedule ended at step 3
    missing = one_line_error(launch("pretrain_vega.py", *run, "--train-iters", "6", "--load",
                                    tmp_path / "no-such-dir"), "--load")
    # Under torchrun every rank refuses it: the line still comes once (not once per rank), and the launch fails.
    refused = launch("pretrain_vega.py", *run, "--train-iters", "6", "--load", tmp_path / "no-such-dir", nproc=2)
    assert refused.returncode != 0 and refused.stderr.count("error: ") == 1 and missing in refused.stderr, \
        refused.stderr
    # The requeue pattern: --load is the --save directory, empty on the first launch.
    first = launch_ok("pretrain_vega.py", *run, "--train-iters", "1", "--load", tmp_path / "requeue", "--save",
                      tmp_path / "requeue")
    assert "starting from scratch" in first.stdout
    one_line_error(launch("pretrain_vega.py", *run, "--train-iters", "4", "--load", ckpt, "--save",
                          tmp_path / "bf16", "--bf16"), "--load")
