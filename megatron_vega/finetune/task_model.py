"""The model fine-tuning trains: the encoder, the task head and, for prompt tuning, the prompt."""
from megatron.core.transformer.module import MegatronModule

from megatron_vega import runtime
from megatron_vega.finetune.tasks import build_head
from megatron_vega.model.attention_inputs import AttentionInputs
from megatron_vega.model.build import build_model
from megatron_vega.model.heads import init_head
from megatron_vega.model.weights import init_weights


class TaskModel(MegatronModule):
    """Encoder, task head and optional prompt (``prompt/``) as one module: what DDP wraps and the optimizer
    steps. Returns fp32 logits."""

    def __init__(self, encoder, head, prompt=None):
        super().__init__(config=encoder.config)
        self.encoder, self.head, self.prompt = encoder, head, prompt

    def forward(self, batch):
        if self.prompt is not None:
            hidden, batch = self.prompt(self.encoder, batch)
        else:
            hidden = self.encoder(batch["tokens"], AttentionInputs.from_batch(batch))
        return self.head(hidden, batch).float()


def build_task_model(task: str, model_cfg, tc, cls_dropout: float, seed: int) -> TaskModel:
    """Seeded (layout-independent) weights; a checkpoint, if any, is loaded on top by the caller."""
    [encoder] = build_model(model_cfg, tc, heads=())
    init_weights([encoder], seed)
    head = build_head(task, model_cfg.hidden_size, cls_dropout)
    init_head(head, model_cfg.init_method_std, seed)
    return TaskModel(encoder, head.to(device=runtime.device(), dtype=tc.params_dtype))
