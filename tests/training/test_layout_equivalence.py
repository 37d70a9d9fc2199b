"""The same 8 steps on the same data give the same losses and grad norms on every layout (fp32, dropout off), with
clipping active at every step, and the same weight-decay groups and parameter count."""
import json

import pytest

from megatron_vega.model.parameter_count import count_parameters
from tests.distributed import spawn
from tests.training.helpers import tiny_run, train_and_record_layout

# Adam divides out a uniform gradient scale, so with its usual tiny epsilon a wrong clipping factor hardly shows in
# the losses (a PP=2 norm 1.29x too large moved them by 3e-6). With epsilon above the clipped gradients' size the
# update follows the clipped gradient: the same PP=2 error moves the step-3 loss by 3.5e-4 relative, while correct
# layouts agree within 1e-6. clip 0.05 is far below every step's norm (1.7-2.8), so every step clips.
CLIPPED = {"lr": 1e-2, "clip_grad": 0.05, "adam_eps": 1e-3}
LAYOUTS = {  # name -> (processes, tiny_run kwargs)
    "TP1PP1": (1, {}),
    "TP2": (2, {"tp": 2}), "PP2": (2, {"pp": 2}), "DP2": (2, {}), "DP2-distopt": (2, {"distributed_optimizer": True}),
    "PP2-interleaved": (2, {"pp": 2, "vp": 1}),
    "TP2xPP2": (4, {"tp": 2, "pp": 2}),
    "DP2xPP2-interleaved-distopt": (4, {"pp": 2, "vp": 1, "distributed_optimizer": True}),
}
RTOL = 1e-5


def _run_layouts(rank, world, out_dir):
    for name, (processes, kwargs) in LAYOUTS.items():
        if processes == world:
            train_and_record_layout(rank, world, tiny_run(**kwargs, **CLIPPED), f"{out_dir}/{name}.json")


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= RTOL * abs(b)


@pytest.mark.slow
def test_training_agrees_across_layouts(tmp_path):
    for world in sorted({processes for processes, _ in LAYOUTS.values()}):
        spawn(_run_layouts, world, str(tmp_path))
    results = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in LAYOUTS}
    reference = results["TP1PP1"]
    assert list(reference["loss"]) == [str(i) for i in range(1, 9)]
    table = [f"{'step':>4} " + " ".join(f"{n:>28}" for n in results)]
    for step in reference["loss"]:
        table.append(f"{step:>4} " + " ".join(f"{r['loss'][step]:14.8f} {r['grad_norm'][step]:13.8f}"
                                              for r in results.values()))
    print("\n".join(table))  # loss, grad norm per layout

    assert all(norm > CLIPPED["clip_grad"] for norm in reference["grad_norm"].values()), "clipping inactive"
    for name, r in results.items():
        for step, loss in reference["loss"].items():
            assert _close(r["loss"][step], loss), (name, step, "loss", r["loss"][step], loss)
            ref_norm = reference["grad_norm"][step]
            assert _close(r["grad_norm"][step], ref_norm), (name, step, "grad norm", r["grad_norm"][step], ref_norm)

    # Decay on weights only (biases and LayerNorms excluded), every copy of a parameter in the same group; the
    # parameters counted once (megatron-core's grad-norm rule) add up to the model's size on every layout.
    for name, wd in reference["weight_decay"].items():
        no_decay = name.endswith(".bias") or "layernorm" in name
        assert wd == ([0.0] if no_decay else [1.0]), (name, wd)
    cfg = tiny_run().model
    size = count_parameters(cfg) + (cfg.padded_vocab_size - cfg.vocab_size) * (cfg.hidden_size + 1)
    for name, r in results.items():
        assert r["weight_decay"] == reference["weight_decay"], name
        assert r["parameters"] == size, (name, r["parameters"], size)

