"""Deep and shallow prompts at TP=2 give the TP=1 loss and gradients (prompt, head), real-word init included, and
a prompt trained at TP=2 is the same file a TP=1 run loads."""
import pytest
import torch

from tests.distributed import spawn


def _loss_and_grads(tp, spm_path, data_file, prompt_type):
    from megatron.core.distributed import finalize_model_grads

    from megatron_vega import runtime
    from megatron_vega.config import ParallelConfig, model_preset
    from megatron_vega.data.tokenizer import VegaTokenizer
    from megatron_vega.finetune.config import FinetuneRun, OptimConfig, SiftConfig, TaskConfig
    from megatron_vega.finetune.features import TextEncoder, collate, make_samples
    from megatron_vega.finetune.prompt_tuning import attach_prompt
    from megatron_vega.finetune.task_model import build_task_model
    from megatron_vega.finetune.trainer import Finetuner
    from megatron_vega.model.build import transformer_config
    from megatron_vega.prompt.config import PromptConfig
    from megatron_vega.superglue.formats import build_instances
    from megatron_vega.superglue.readers import read_examples

    runtime.init_model_parallel(tp, 1, seed=7)
    tokenizer = VegaTokenizer(spm_path)
    cfg = model_preset("tiny", vocab_size=tokenizer.vocab_size, hidden_dropout=0.0, attention_dropout=0.0)
    model = build_task_model("WSC", cfg, transformer_config(cfg, ParallelConfig(tensor_model_parallel_size=tp)),
                             0.0, seed=7)
    run = FinetuneRun(task=TaskConfig(task="WSC"), optim=OptimConfig(micro_batch_size=4, seed=7),
                      prompt=PromptConfig(prompt_tuning=True, prompt_type=prompt_type, prompt_length=3,
                                          prompt_init="text", prompt_init_text="the meaning of it",
                                          prompt_dropout=0.0))
    attach_prompt(run, model, cfg, tokenizer, torch.float32)
    tuner = Finetuner(model, run.optim, SiftConfig(), tokenizer.pad_id)
    instances = build_instances("WSC", read_examples("WSC", data_file)[:4])
    batch = collate(make_samples("WSC", TextEncoder(tokenizer, 64), instances, training=False), tokenizer.pad_id)
    table = model.prompt.encoder.embedding.detach().clone()
    loss, _ = tuner.loss(batch)
    loss.backward()
    finalize_model_grads([tuner.ddp])
    grads = {name: p.main_grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.item(), table, grads


def _compare(rank, world, spm_path, data_file):
    for prompt_type in ("deep", "shallow"):
        tp2 = _loss_and_grads(2, spm_path, data_file, prompt_type)
        tp1 = _loss_and_grads(1, spm_path, data_file, prompt_type)  # DP=2: both ranks hold the same batch
        assert tp2[0] == pytest.approx(tp1[0], rel=1e-5), prompt_type
        torch.testing.assert_close(tp2[1], tp1[1], rtol=1e-5, atol=1e-6)  # real-word init gathered from TP shards
        assert set(tp2[2]) == set(tp1[2]) and "prompt.encoder.embedding" in tp2[2]
        for name, grad in tp1[2].items():
            assert grad.abs().sum() > 0, name
            torch.testing.assert_close(tp2[2][name], grad, rtol=1e-4, atol=1e-6, msg=f"{prompt_type} {name}")


@pytest.mark.slow
def test_prompts_at_tp2_equal_tp1(shared_data):
    spawn(_compare, 2, str(shared_data / "corpus" / "botchan_sp1k.model"),
          str(shared_data / "superglue" / "full" / "WSC" / "val.jsonl"))
