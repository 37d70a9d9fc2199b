"""The UniMC model (an encoder with its MLM head, no new parameter), its checkpoints, (fine-tuning: finetune/unimc.py).

A UniMC checkpoint is a pretraining checkpoint (encoder + ``lm_head``, global names, any layout): UniMC loads any
MLM checkpoint, and what it saves loads back into UniMC, MLM pretraining or SuperGLUE fine-tuning (encoder).
"""
from dataclasses import asdict, replace
from pathlib import Path

import torch
from megatron.core import parallel_state
from megatron.core.transformer.module import MegatronModule

from megatron_vega.model.attention_inputs import AttentionInputs
from megatron_vega.model.build import build_model
from megatron_vega.model.heads import MLM_HEAD
from megatron_vega.model.weights import init_weights, parameters_by_global_name, sharded_state_dict
from megatron_vega.training.checkpoint_view import load_model_tensors
from megatron_vega.training.checkpointing import checkpoint_path, publish
from megatron_vega.unimc.layout import NOT_LABELLED
from megatron_vega.unimc.losses import option_scores, vocab_columns


class UniMCModel(MegatronModule):
    """forward(batch) -> {"scores": [b, s] OP scores, "lm_logits": [n, V/tp] at the MLM targets, "lm_targets": [n]}.

    ``mask``: "isolated" (the default: options see [CLS], themselves and the shared text, which sees no option, so an
    option's score depends on nothing but itself and the shared text) or "reference" (UniMC's: the question and
    passage see every option as well)."""

    def __init__(self, encoder, yes_id: int, mask: str = "isolated"):
        super().__init__(config=encoder.config)
        self.encoder, self.yes_id, self.mask = encoder, yes_id, mask

    def forward(self, batch):
        tokens, omask, labels = batch["tokens"], batch["omask"], batch["lm_labels"]
        b = tokens.shape[0]
        attention = replace(AttentionInputs.from_batch(batch), context_sees_blocks=self.mask == "reference")
        text = labels.ne(NOT_LABELLED)
        text[omask[:, 0], omask[:, 1]] = False
        rows, cols = text.nonzero(as_tuple=True)
        flat = torch.cat([omask[:, 1] * b + omask[:, 0], cols * b + rows])  # the head's s-major positions
        logits = self.encoder(tokens, attention, lm_positions=flat)
        yes = vocab_columns(logits[:len(omask)], [self.yes_id])[:, 0]
        targets = torch.cat([labels[omask[:, 0], omask[:, 1]], labels[rows, cols]])
        labelled = targets.ne(NOT_LABELLED)
        return {"scores": option_scores(yes, omask, tuple(tokens.shape)), "lm_logits": logits[labelled],
                "lm_targets": targets[labelled]}


def build_unimc_model(model_cfg, tc, seed: int, yes_id: int, mask: str) -> UniMCModel:
    [encoder] = build_model(model_cfg, tc, heads=(MLM_HEAD,))
    init_weights([encoder], seed)
    return UniMCModel(encoder, yes_id, mask)


def load_mlm(root: str, encoder) -> None:
    """Encoder and MLM head from a checkpoint (pretraining or UniMC) into this layout. Collective."""
    # a checkpoint without the MLM head: one line naming the missing tensors
    load_model_tensors(checkpoint_path(root), sharded_state_dict([encoder]), parameters_by_global_name([encoder]))


def save_mlm(root: str, iteration: int, encoder, model_cfg, tokenizer_path: str, meta: dict) -> Path:
    """The encoder and MLM head in the pretraining layout, with what UniMC trained on. Collective."""
    extra = {"config": {"model": asdict(model_cfg), "data": {"tokenizer_model": str(Path(tokenizer_path).resolve())}},
             "unimc": meta}
    layout = {"tp": parallel_state.get_tensor_model_parallel_world_size(), "pp": 1,
              "dp": parallel_state.get_data_parallel_world_size()}
    return publish(root, iteration, {"model": sharded_state_dict([encoder]), "extra": extra, "layout": layout})
