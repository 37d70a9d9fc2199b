"""SiFT under tensor parallelism: at TP=2 the loss (task + λ·adversarial) and the gathered gradients equal TP=1's
on the same weights and batch (dropout off), so the perturbation δ agrees across TP ranks."""
import pytest
import torch

from tests.distributed import spawn


def _sift_loss_and_grads(tp: int, spm_path: str, data_file: str):
    from megatron.core.distributed import finalize_model_grads

    from megatron_vega import runtime
    from megatron_vega.config import ParallelConfig, model_preset
    from megatron_vega.data.tokenizer import VegaTokenizer
    from megatron_vega.finetune.config import OptimConfig, SiftConfig
    from megatron_vega.finetune.features import TextEncoder, collate, make_samples
    from megatron_vega.finetune.task_model import build_task_model
    from megatron_vega.finetune.trainer import Finetuner
    from megatron_vega.model.build import transformer_config
    from megatron_vega.model.weights import gather_full_state_dict
    from megatron_vega.superglue.formats import build_instances
    from megatron_vega.superglue.readers import read_examples

    runtime.init_model_parallel(tp, 1, seed=7)
    tokenizer = VegaTokenizer(spm_path)
    cfg = model_preset("tiny", vocab_size=tokenizer.vocab_size, hidden_dropout=0.0, attention_dropout=0.0)
    model = build_task_model("WiC", cfg, transformer_config(cfg, ParallelConfig(tensor_model_parallel_size=tp)),
                             0.0, seed=7)
    # A large step so that the ascent step visibly moves δ (and a wrong δ gradient would show).
    tuner = Finetuner(model, OptimConfig(micro_batch_size=4), SiftConfig(sift=True, sift_step_size=0.1),
                      tokenizer.pad_id)
    instances = build_instances("WiC", read_examples("WiC", data_file)[:4])
    batch = collate(make_samples("WiC", TextEncoder(tokenizer, 64), instances, training=False), tokenizer.pad_id)
    torch.manual_seed(11)  # δ₀ comes from the default generator
    loss, parts = tuner.loss(batch)
    loss.backward()
    finalize_model_grads([tuner.ddp])
    grads = gather_full_state_dict([model.encoder], grads=True)
    grads.update({name: p.main_grad.clone() for name, p in model.head.named_parameters()})
    return loss.item(), parts.tolist(), grads


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
