"""One fine-tuning loss step on a fixed batch, for the TP=2 vs TP=1 comparisons of SiFT and PDR: the tiny model with
dropout off, seeded weights, the first four records of a file; returns the loss, its parts and the gathered
gradients. Runs inside a process of ``tests.distributed.spawn``."""
import torch


def loss_and_grads(tp: int, spm_path: str, task: str, data_file: str, sift, pdr=None, head_scale: float = 1.0):
    """(loss, [task, adversarial, pdr] parts, {name: full gradient}) of one ``Finetuner.loss`` at TP=``tp`` with
    the ``SiftConfig`` ``sift`` and ``PdrConfig`` ``pdr``; ``head_scale`` multiplies the classifier's weights
    (large: confident posteriors, for a sizeable PDR term)."""
    from megatron.core.distributed import finalize_model_grads

    from megatron_vega import runtime
    from megatron_vega.config import ParallelConfig, model_preset
    from megatron_vega.data.tokenizer import VegaTokenizer
    from megatron_vega.finetune.config import OptimConfig
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
    model = build_task_model(task, cfg, transformer_config(cfg, ParallelConfig(tensor_model_parallel_size=tp)),
                             0.0, seed=7)
    with torch.no_grad():
        model.head.classifier.weight.mul_(head_scale)
    tuner = Finetuner(model, OptimConfig(micro_batch_size=4), sift, tokenizer.pad_id, pdr=pdr)
    instances = build_instances(task, read_examples(task, data_file)[:4])
    batch = collate(make_samples(task, TextEncoder(tokenizer, 64), instances, training=False), tokenizer.pad_id)
    torch.manual_seed(11)  # δ₀ and the PDR noise come from the default generator
    loss, parts = tuner.loss(batch)
    loss.backward()
    finalize_model_grads([tuner.ddp])
    grads = gather_full_state_dict([model.encoder], grads=True)
    grads.update({name: p.main_grad.clone() for name, p in model.head.named_parameters()})
    return loss.item(), parts.tolist(), grads
