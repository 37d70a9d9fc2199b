"""fp16 with dynamic loss scaling: an injected overflow skips that step, lowers the scale, training continues."""
import json

import pytest
import torch

from megatron_vega.objectives.mlm import mlm_forward_step
from tests.distributed import spawn
from tests.training.helpers import tiny_run, train_and_record

OVERFLOW_AT = 3


def _overflowing_forward_step(data_iterator, model):
    output, loss_fn = mlm_forward_step(data_iterator, model)
    from megatron_vega.model.build import unwrap
    step = unwrap(model)._step = getattr(unwrap(model), "_step", 0) + 1

    def loss_with_overflow(output_tensor):
        loss, logged = loss_fn(output_tensor)
        if step == OVERFLOW_AT * 4:  # 4 micro-batches per step: the last micro-batch of step 3
            loss = loss * torch.tensor(float("inf"))
        return loss, logged

    return output, loss_with_overflow


def _worker(rank, world, out):
    import megatron_vega.training.trainer as trainer_module
    scales = []
    original = trainer_module.Trainer.train_step

    def recording_step(self, dataset):
        result = original(self, dataset)
        scales.append((self.optimizer.get_loss_scale().item(), self.skipped))
        return result

    trainer_module.Trainer.train_step = recording_step
    history = train_and_record(rank, world, tiny_run(iters=5, fp16=True, initial_loss_scale=1024.0,
                                                     hysteresis=1), forward_step=_overflowing_forward_step)
    with open(out, "w") as f:
        json.dump({"scales": scales, "losses": history}, f)


@pytest.mark.slow
def test_overflow_skips_step_and_lowers_scale(tmp_path):
    spawn(_worker, 1, str(tmp_path / "out.json"))
    result = json.loads((tmp_path / "out.json").read_text())
    scales = result["scales"]
    print("per step (loss scale, skipped so far):", scales)
    assert scales[OVERFLOW_AT - 2] == [1024.0, 0]
    assert scales[OVERFLOW_AT - 1] == [512.0, 1]  # the overflowing step was skipped and the scale halved
    assert scales[-1][1] == 1 and len(scales) == 5  # no further skips; training went on to the end
    assert all(abs(loss) < 100 for _, loss in result["losses"] if _ != OVERFLOW_AT)
