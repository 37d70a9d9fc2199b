"""SiFT under tensor parallelism: at TP=2 the loss (task + λ·adversarial) and the gathered gradients equal TP=1's
on the same weights and batch (dropout off), so the perturbation δ agrees across TP ranks."""
import pytest
import torch

from tests.distributed import spawn
from tests.finetune.helpers import loss_and_grads


def _sift_loss_and_grads(tp: int, spm_path: str, data_file: str):
    from megatron_vega.finetune.config import SiftConfig

    # A large step so that the ascent step visibly moves δ (and a wrong δ gradient would show).
    return loss_and_grads(tp, spm_path, "WiC", data_file, SiftConfig(sift=True, sift_step_size=0.1))


def _compare(rank, world, spm_path, data_file):
    tp2 = _sift_loss_and_grads(2, spm_path, data_file)
    tp1 = _sift_loss_and_grads(1, spm_path, data_file)  # DP=2: both ranks hold the same batch
    assert tp2[1][1] > 0  # the adversarial term is really there
    assert tp2[0] == pytest.approx(tp1[0], rel=1e-5)
    assert tp2[1] == pytest.approx(tp1[1], rel=1e-5)
    for name, grad in tp1[2].items():
        torch.testing.assert_close(tp2[2][name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_sift_loss_and_grads_at_tp2_equal_tp1(shared_data):
    spawn(_compare, 2, str(shared_data / "corpus" / "botchan_sp1k.model"),
          str(shared_data / "superglue" / "full" / "WiC" / "val.jsonl"))
