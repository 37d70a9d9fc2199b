"""A checkpoint loaded without its optimizer state (--finetune, --no-load-optim, a from-hf conversion) must train
on from the loaded weights in every precision: bf16/fp16 keep fp32 main parameters that are refreshed from the
loaded model, or their first step writes the random initialisation back (loss back at ln V after one step)."""
import numpy as np
import pytest

from tests.data.conftest import write_corpus
from tests.launch import launch_ok, training_log

RUN = ("--seq-length", "64", "--micro-batch-size", "4", "--global-batch-size", "8",
       "--log-interval", "1")


@pytest.mark.slow
def test_weights_only_loads_continue_from_the_loaded_model(tmp_path):
    # Ten distinct tokens: a few steps take the MLM loss from ln(1000) = 6.9 to ~2.3, far from the random init.
    rng = np.random.default_rng(0)
    data = write_corpus(tmp_path / "corpus", [list(map(int, rng.integers(50, 60, 300))) for _ in range(100)],
                        vocab_size=1000, sequences_per_document=4)
    run = RUN + ("--data-path", data)
    launch_ok("pretrain_vega.py", "--model-preset", "tiny", *run, "--train-iters", "30", "--lr", "5e-3", "--save",
              tmp_path / "trained")
    launch_ok("tools/convert_checkpoint.py", "to-hf", "--load", tmp_path / "trained", "--out", tmp_path / "hf")
    launch_ok("tools/convert_checkpoint.py", "from-hf", "--hf-dir", tmp_path / "hf", "--save", tmp_path / "from-hf")

    def continued(name, source, *flags, nproc=1):  # the model comes from the checkpoint
        out = launch_ok("pretrain_vega.py", *run, "--train-iters", "2", "--lr", "1e-5", "--load", tmp_path / source,
                        "--save", tmp_path / name, *flags, nproc=nproc).stdout
        return training_log(out)[2]["loss"]

    reference = continued("fp32", "trained", "--finetune")
    legs = {"bf16 --finetune": continued("bf16", "trained", "--finetune", "--bf16"),
            "fp16 --finetune": continued("fp16", "trained", "--finetune", "--fp16"),
            "bf16 --no-load-optim": continued("bf16-no-optim", "trained", "--no-load-optim", "--bf16"),
            "bf16 distributed optimizer DP=2 --finetune": continued("bf16-dp2", "trained", "--finetune", "--bf16",
                                                                    "--use-distributed-optimizer", nproc=2),
            "bf16 from-hf": continued("bf16-hf", "from-hf", "--bf16"),
            "fp16 from-hf": continued("fp16-hf", "from-hf", "--fp16")}
    print(f"step-2 loss: fp32 --finetune {reference:.4f}; " + "; ".join(f"{k} {v:.4f}" for k, v in legs.items()))
    assert reference < 3.0
    for name, loss in legs.items():
        assert abs(loss - reference) < 0.1, name
