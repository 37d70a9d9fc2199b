"""GLM's autoregressive blank infilling on the encoder (docs/glm_and_cloze.md): cross-entropy of Part B's targets
under the prefix-bidirectional + causal mask, with GLM's two position rows (position 1 as the relative positions'
input, position 2 as an added embedding row)."""
from dataclasses import dataclass, replace

import numpy as np
import torch

from megatron_vega.cli import option
from megatron_vega.data.glm_blanks import GLM_SPECIALS, GLMDataset, SpanSettings, glm_special_ids
from megatron_vega.data.sampler import collate
from megatron_vega.data.tokenizer import SyntheticVocab
from megatron_vega.errors import VegaInputError
from megatron_vega.model.heads import MLM_HEAD
from megatron_vega.objectives.base import Objective, model_output
from megatron_vega.objectives.losses import mlm_loss
from megatron_vega.objectives.registry import register_objective
from megatron_vega.training.arguments import ObjectiveSettings
from megatron_vega.training.flops import train_flops_per_token

# Expected share of a sequence that is Part B (≈0.20 L of ≈1.09 L: docs/glm_and_cloze.md), for FLOPs only
PART_B_SHARE = 0.18
BATCH_KEYS = ("tokens", "labels", "padding_mask", "loss_mask", "position_ids", "block_position_ids", "prefix_lengths")


@dataclass
class GLMSettings(ObjectiveSettings):
    glm_mask_ratio: float = option(0.15, "Token-level spans until this share of the text is covered.")
    glm_span_lambda: float = option(3.0, "Poisson mean of a token-level span's length.")
    glm_max_span: int = option(39, "Longest token-level span (the Poisson weights are truncated to 1..N).")
    glm_token_prob: float = option(1.0, "Share of samples with token-level [MASK] spans (GLM's bert_prob).")
    glm_sentence_prob: float = option(0.0, "Share of samples with sentence-level [sMASK] spans (gap_sentence_prob); "
                                           "the rest get one document-level [gMASK] span.")
    glm_gpt_min_ratio: float = option(0.5, "A [gMASK] span covers between this share and all of the text.")
    glm_gpt_infill_prob: float = option(0.5, "Share of [gMASK] spans placed at a random place; the others are "
                                             "the text's suffix.")
    glm_shuffle_spans: bool = option(True, "Part B's spans in a random order (else in the text's order).")
    glm_text_share: float = option(0.88, "Share of --seq-length given to the original text; the rest holds "
                                         "Part B's extra positions (two per span).")
    glm_block_positions: str = option("embedding", "Position 2 (the place inside a span): an embedding row added "
                                                   "to the word vectors, relative (pos2_i - pos2_j between two "
                                                   "tokens of one span, in place of their position-1 distance 0), "
                                                   "or none (relative positions of position 1 only).",
                                      choices=["embedding", "relative", "none"])

    def spans(self) -> SpanSettings:
        return SpanSettings(self.glm_mask_ratio, self.glm_span_lambda, self.glm_max_span, self.glm_token_prob,
                            self.glm_sentence_prob, self.glm_gpt_min_ratio, self.glm_gpt_infill_prob,
                            self.glm_shuffle_spans)


def check_settings(cfg: GLMSettings) -> None:
    for name in ("glm_mask_ratio", "glm_token_prob", "glm_sentence_prob", "glm_gpt_min_ratio", "glm_gpt_infill_prob"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise VegaInputError("--" + name.replace("_", "-"), f"must be in [0, 1], got {getattr(cfg, name)}")
    if cfg.glm_token_prob + cfg.glm_sentence_prob > 1.0:
        raise VegaInputError("--glm-sentence-prob", "plus --glm-token-prob must not exceed 1")
    if cfg.glm_span_lambda <= 0 or cfg.glm_max_span < 1:
        raise VegaInputError("--glm-span-lambda", "and --glm-max-span must be positive")
    if not 0.5 <= cfg.glm_text_share < 1.0:
        raise VegaInputError("--glm-text-share", f"must be in [0.5, 1), got {cfg.glm_text_share}")


class BlankInfilling(Objective):
    config_class = GLMSettings

    def __init__(self, run):
        super().__init__(run)
        check_settings(self.cfg)
        # The model gets the position-2 table here, so the run config every checkpoint saves describes it.
        if self.cfg.glm_block_positions == "embedding" and run.model.block_position_embeddings == 0:
            run.model.block_position_embeddings = run.model.max_position_embeddings + 1
        run.model.block_positions_relative = self.cfg.glm_block_positions == "relative"

    def heads(self):
        return (MLM_HEAD,)

    def datasets(self, vocab):
        from megatron_vega.data.mlm_dataset import build_mlm_datasets
        run = self.run
        if run.data.seq_length > run.model.max_position_embeddings:
            raise VegaInputError("--seq-length", f"{run.data.seq_length} exceeds --max-position-embeddings "
                                                 f"{run.model.max_position_embeddings} (position 2's table)")
        if isinstance(vocab, SyntheticVocab):  # mock data: the top ids are GLM's, not text
            vocab = SyntheticVocab(run.model.vocab_size - len(GLM_SPECIALS))
        if vocab.vocab_size > run.model.vocab_size - len(GLM_SPECIALS):
            raise VegaInputError("--vocab-size", f"GLM puts {' '.join(GLM_SPECIALS)} after the tokenizer's "
                                                 f"{vocab.vocab_size} ids: give --vocab-size "
                                                 f"{vocab.vocab_size + len(GLM_SPECIALS)} or more")
        self.ids = glm_special_ids(run.model.vocab_size, vocab)
        text_length = max(3, int(run.data.seq_length * self.cfg.glm_text_share))
        sources = build_mlm_datasets(replace(run.data, seq_length=text_length), vocab, run.train.seed, unmasked=True)
        glm = [None if s is None else GLMDataset(s, self.ids, self.cfg.spans(), run.data.seq_length, run.train.seed)
               for s in sources[:2]]
        return glm[0], glm[1]

    def host_batch(self, dataset, indices) -> dict[str, torch.Tensor]:
        """The micro-batch's GLM arrays plus ``lm_positions`` (flat, sequence-major indices of Part B)."""
        arrays = collate([dataset[int(i)] for i in indices])
        keys = [k for k in BATCH_KEYS if k != "block_position_ids" or self.cfg.glm_block_positions != "none"]
        batch = {k: torch.from_numpy(np.ascontiguousarray(arrays[k])).long() for k in keys}
        batch["lm_positions"] = torch.from_numpy(np.flatnonzero(arrays["loss_mask"].T.reshape(-1) > 0)).long()
        return batch

    def forward_step(self, data_iterator, model):
        """Part B's cross-entropy: the output layer runs at Part B's positions only (vocab-parallel CE there)."""
        batch = next(data_iterator)
        return model_output(model, batch), lambda logits: mlm_loss(batch, logits)

    def flops_per_token(self) -> float:
        run = self.run
        return train_flops_per_token(run.model, run.data.seq_length, PART_B_SHARE,
                                     micro_batch_size=run.train.micro_batch_size)


register_objective("glm", BlankInfilling)
