"""COCO-LM corrective pretraining (T-NLRv5's): an auxiliary MLM generator corrupts the input, the main encoder
detects (copy head) and corrects (corrective LM head) every replaced token, optionally with sequence contrastive
learning against a cropped view. docs/coco_lm.md has the formulas and every choice made here.

One training step, per global batch:
1. the generator's schedule (``--generator-*`` sizes, parameters ``generator.*``, dropout off): MLM on the
   [MASK]ed positions; on its last stage the replacements are drawn from its softmax without gradient by
   vocab-parallel Gumbel-max (ops/vocab_parallel_sampling.py), the same on every TP rank; the corrupted sequence
   of each micro-batch is kept for step 2;
2. the main model's schedule on the corrupted sequences: copy loss on every non-padding token, corrective LM loss
   at the masked positions weighted by sg(1 − σ(copy logit)), SCL when ``--scl`` is on.
The models' parameters are disjoint except the shared word table (``--embedding-sharing plain``, whose grads from
step 1 land in the main model's buffer before its reduction), so the one optimizer step trains
L = L_gen + λ_bin·L_copy + L_clm + λ_scl·L_scl exactly. With ``--embedding-sharing gdes`` the main model reads
sg(E_gen) + E_Δ: no gradient crosses between the models.

Pipeline parallelism is refused: the replacements are drawn on the generator's last stage and would have to reach
the main model's first stage.
"""
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_vega.cli import option
from megatron_vega.errors import VegaInputError
from megatron_vega.model.attention_inputs import AttentionInputs
from megatron_vega.model.build import unwrap
from megatron_vega.model.heads import MLM_HEAD
from megatron_vega.objectives.base import MAIN, ModelSpec, Objective, model_output
from megatron_vega.objectives.coco_lm_heads import (
    CLM_HEAD,
    COPY_HEAD,
    DisentangledWordEmbeddings,
    SharedWordEmbeddings,
    scl_head,
)
from megatron_vega.objectives.coco_lm_losses import (
    at_positions,
    copy_loss,
    corrective_lm_loss,
    masked_lm_loss,
    sequence_contrastive_loss,
)
from megatron_vega.objectives.registry import register_objective
from megatron_vega.ops.vocab_parallel_sampling import row_keys, vocab_parallel_gumbel_sample
from megatron_vega.training.arguments import ObjectiveSettings
from megatron_vega.training.batches import host_batch
from megatron_vega.training.flops import forward_flops_per_token

GENERATOR = "generator"
_CROP_STREAM = 0xC0C0  # the crop's random stream, apart from the masking's


@dataclass
class CocoLMConfig(ObjectiveSettings):
    generator_num_layers: int = option(0, "Layers of the auxiliary generator (0: a third of the main model's, at "
                                          "least 1; COCO-LM: 4 of 12).")
    generator_hidden_size: int = option(0, "Generator width (0: the main model's, as COCO-LM; plain embedding "
                                           "sharing needs the main model's).")
    generator_num_attention_heads: int = option(0, "Generator attention heads (0: the main model's).")
    generator_ffn_hidden_size: int = option(0, "Generator FFN size (0: the main model's).")
    embedding_sharing: str = option("plain", "Word embeddings of generator and main model: 'plain' one shared "
                                             "table (COCO-LM), 'none' a table each, 'gdes' DeBERTa-v3's "
                                             "gradient-disentangled sharing (main: sg(E_gen) + E_delta).",
                                    choices=["plain", "none", "gdes"])
    copy_loss_weight: float = option(50.0, "λ_bin, the weight of the binary copy loss (COCO-LM: 50).")
    clm_head: str = option("projection", "Corrective LM head: 'projection' E·h + b (COCO-LM), 'mlm' the MLM head "
                                         "(dense, GELU, LayerNorm, E·h + b; self-evolution and to-hf read it).",
                           choices=["projection", "mlm"])
    scl: bool = option(False, "Sequence contrastive learning between the corrupted sequence and a cropped original.")
    scl_loss_weight: float = option(1.0, "λ_scl, the weight of the SCL loss.")
    scl_crop_ratio: float = option(0.9, "Share of a sequence's tokens the SCL crop keeps (one contiguous span).")
    scl_temperature: float = option(1.0, "τ of the SCL similarities.")
    scl_projection_size: int = option(768, "Output size of the SCL head on [CLS].")


class CocoLM(Objective):
    config_class = CocoLMConfig

    def __init__(self, run):
        super().__init__(run)
        self.vocab = None
        self._corrupted: list[torch.Tensor] = []  # per micro-batch, from the generator's pass to the main pass
        self._counts: dict[str, torch.Tensor] = {}

    # -- models --------------------------------------------------------------------------------------------
    def generator_config(self):
        cfg, main = self.cfg, self.run.model
        hidden = cfg.generator_hidden_size or main.hidden_size
        heads = cfg.generator_num_attention_heads or main.num_attention_heads
        same_shape = (hidden, heads) == (main.hidden_size, main.num_attention_heads)
        return replace(main, num_layers=cfg.generator_num_layers or max(1, main.num_layers // 3), hidden_size=hidden,
                       num_attention_heads=heads, kv_channels=main.kv_channels if same_shape else None,
                       ffn_hidden_size=cfg.generator_ffn_hidden_size or main.ffn_hidden_size,
                       hidden_dropout=0.0, attention_dropout=0.0)

    def heads(self):
        lm = CLM_HEAD if self.cfg.clm_head == "projection" else MLM_HEAD
        return (COPY_HEAD, lm) + ((scl_head(self.cfg.scl_projection_size),) if self.cfg.scl else ())

    @property
    def lm_head_name(self) -> str:
        return self.heads()[1].name

    def models(self):
        return [ModelSpec(MAIN, self.run.model, self.heads()), ModelSpec(GENERATOR, self.generator_config(),
                                                                          (MLM_HEAD,))]

    def further_models(self):
        return [(GENERATOR, self.generator_config(), self.cfg.embedding_sharing == "plain")]

    def prepare_model(self, name, chunks, built):
        sharing = self.cfg.embedding_sharing
        for chunk in chunks:
            if not chunk.pre_process or sharing == "none":
                continue
            if name == MAIN and sharing == "gdes":  # the main model's own table becomes E_delta, zero at the start
                torch.nn.init.zeros_(chunk.word_embeddings.weight)
                chunk.word_embeddings = DisentangledWordEmbeddings(chunk.word_embeddings)
            elif name == GENERATOR and sharing == "gdes":
                built[MAIN][0].word_embeddings.set_source(chunk.word_embeddings)
            elif name == GENERATOR:
                del chunk.word_embeddings  # built and initialised, never used: the main model's table replaces it
                chunk.word_embeddings = SharedWordEmbeddings(built[MAIN][0].word_embeddings)

    def fresh_if_missing(self, key, stored):
        """Starting from a checkpoint of another objective (an MLM one, or one imported from Hugging Face): the
        COCO-LM heads, E_delta (zero) and a generator the checkpoint has none of start fresh; the generator's table
        is then the main model's (training/checkpoint_view.py)."""
        if key.startswith(GENERATOR + "."):
            return not any(k.startswith(GENERATOR + ".") for k in stored)
        return key.split(".")[0] in ("copy_head", "clm_head", "scl_head") or key == "word_embeddings.delta.weight"

    # -- data ----------------------------------------------------------------------------------------------
    def check(self) -> None:
        """The run's settings this objective cannot train with, each as one line."""
        cfg, par, main = self.cfg, self.run.parallel, self.run.model
        if par.pipeline_model_parallel_size > 1:
            raise VegaInputError("--pipeline-model-parallel-size", "coco-lm trains at 1 only: the replacements drawn "
                                 "on the generator's last stage would have to reach the main model's first stage")
        if cfg.embedding_sharing != "none" and self.generator_config().hidden_size != main.hidden_size:
            raise VegaInputError("--generator-hidden-size", f"{cfg.embedding_sharing} embedding sharing needs the "
                                 f"main model's width ({main.hidden_size})")
        if cfg.embedding_sharing == "plain" and par.overlap_grad_reduce:
            raise VegaInputError("--overlap-grad-reduce", "not with --embedding-sharing plain: the generator's "
                                 "gradients reach the shared table outside the main model's schedule")
        gen = self.generator_config()
        if gen.hidden_size % gen.num_attention_heads or gen.num_attention_heads % par.tensor_model_parallel_size:
            raise VegaInputError("--generator-num-attention-heads", "must divide the generator width and be "
                                 "divisible by the tensor-parallel size")
        if not 0 < cfg.scl_crop_ratio <= 1 or cfg.scl_temperature <= 0 or cfg.copy_loss_weight < 0:
            raise VegaInputError("--scl-crop-ratio", "crop ratio in (0, 1], temperature > 0, copy weight >= 0")

    def datasets(self, vocab):
        """MLM data with every selected position a [MASK] (COCO-LM's generator input: no 80/10/10)."""
        from megatron_vega.data.mlm_dataset import build_mlm_datasets
        self.check()
        self.vocab = vocab
        data = replace(self.run.data, random_token_prob=0.0, leave_unmasked_prob=0.0)
        train, valid, _ = build_mlm_datasets(data, vocab, self.run.train.seed)
        return train, valid

    def host_batch(self, dataset, indices):
        """The masked-LM batch (``tokens`` the generator's input, ``labels`` the whole original sequence), the
        global ``sample_ids`` (the replacements' random keys) and, with SCL, the cropped originals."""
        batch = host_batch(dataset, indices)
        batch["sample_ids"] = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        if self.cfg.scl:
            batch["crop_tokens"] = torch.stack([self.crop(row, mask, int(i)) for row, mask, i in
                                                zip(batch["labels"], batch["padding_mask"], indices, strict=True)])
            batch["crop_padding_mask"] = (batch["crop_tokens"] != self.vocab.pad_id).long()
        return batch

    def crop(self, tokens: torch.Tensor, padding_mask: torch.Tensor, sample_id: int) -> torch.Tensor:
        """[CLS] + one contiguous span of ``--scl-crop-ratio`` of the block's content + [SEP], padded; the span's
        start drawn from (seed, sample id)."""
        real = tokens[: int(padding_mask.sum())]
        content = real[1:-1]  # a block is [CLS] content [SEP]
        keep = max(1, round(self.cfg.scl_crop_ratio * len(content)))
        rng = np.random.default_rng([self.run.train.seed, _CROP_STREAM, sample_id])
        start = int(rng.integers(0, max(len(content) - keep, 0) + 1))
        out = torch.full_like(tokens, self.vocab.pad_id)
        span = torch.cat([real[:1], content[start:start + keep], real[-1:]])
        out[: len(span)] = span
        return out

    # -- steps ---------------------------------------------------------------------------------------------
    def _count(self, **values) -> None:
        for key, value in values.items():
            self._counts[key] = self._counts.get(key, 0) + value.detach().float().sum()

    def generator_step(self, data_iterator, model):
        batch = next(data_iterator)
        return model_output(model, batch), partial(self.generator_loss, batch)

    def generator_loss(self, batch, logits):
        """MLM loss of the generator; draws the replacements (before the loss consumes the logits) and keeps the
        micro-batch's corrupted sequence."""
        positions = batch["lm_positions"]
        b = batch["tokens"].shape[0]
        labels = at_positions(batch["labels"].t(), positions)
        keys = row_keys(self.run.train.seed, batch["sample_ids"][positions % b], positions // b)
        sampled = vocab_parallel_gumbel_sample(logits.detach(), keys)
        loss, correct = masked_lm_loss(logits, labels)
        corrupted = batch["labels"].t().reshape(-1).clone()
        corrupted[positions] = sampled
        self._corrupted.append(corrupted.view(-1, b).t())
        self._count(generator_correct=correct, masked=torch.ones_like(correct), replaced=sampled != labels)
        return loss, {"generator loss": loss.detach().clone()}

    def main_step(self, data_iterator, model):
        batch = next(data_iterator)
        corrupted = self._corrupted.pop(0)
        crop = self.crop_projection(model, batch) if self.cfg.scl else None
        output = model_output(model, {**batch, "tokens": corrupted})
        return output, partial(self.main_loss, batch, corrupted, crop)

    @staticmethod
    def crop_projection(model, batch):
        """The SCL head on the main encoder's pass over the cropped original (no other head runs)."""
        chunk = unwrap(model)
        attention = AttentionInputs(batch["crop_padding_mask"])
        input_mask = chunk.input_mask(attention.padding_mask)
        hidden = chunk.encode(chunk.embed(batch["crop_tokens"], input_mask), attention, input_mask)
        return chunk.scl_head(hidden, chunk)

    def main_loss(self, batch, corrupted, crop, outputs):
        cfg = self.cfg
        positions = batch["lm_positions"]
        labels, padding = batch["labels"].t(), batch["padding_mask"].t().bool()
        replaced = corrupted.t() != labels
        copy_logits = outputs["copy_head"]
        copy = copy_loss(copy_logits, replaced, padding)
        replaced_at_masked = at_positions(replaced, positions)
        clm, clm_correct = corrective_lm_loss(outputs[self.lm_head_name], at_positions(labels, positions),
                                              at_positions(copy_logits, positions))
        total = cfg.copy_loss_weight * copy + clm
        says_original = copy_logits.detach() > 0
        self._count(replaced_tokens=replaced & padding, original_tokens=~replaced & padding,
                    copy_correct_replaced=replaced & padding & ~says_original,
                    copy_correct_original=~replaced & padding & says_original,
                    clm_correct_replaced=clm_correct & replaced_at_masked)
        metrics = {"copy loss": copy.detach().clone(), "clm loss": clm.detach().clone()}
        if crop is not None:
            scl, hits = sequence_contrastive_loss(crop, outputs["scl_head"], cfg.scl_temperature)
            total = total + cfg.scl_loss_weight * scl
            self._count(scl_correct=hits, scl_rows=torch.ones_like(hits))
            metrics["scl loss"] = scl.detach().clone()
        return total, {"main loss": total.detach().clone(), **metrics}

    def _pass(self, trainer, dataset, consumed: int, forward_only: bool) -> list[dict]:
        self._corrupted, self._counts = [], {}
        generator = trainer.run_schedule(dataset, consumed, forward_only, forward_step=self.generator_step,
                                         model=trainer.models[GENERATOR])
        main = trainer.run_schedule(dataset, consumed, forward_only, forward_step=self.main_step)
        rates = self.rates()
        return [{"lm loss": g["generator loss"] + m["main loss"], **g, **m, **rates}
                for g, m in zip(generator, main, strict=True)]

    def rates(self) -> dict[str, torch.Tensor]:
        """The step's accuracies and rates over the whole global batch (counts summed over data-parallel ranks)."""
        keys = sorted(self._counts)
        totals = torch.stack([self._counts[k] for k in keys])
        dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
        c = dict(zip(keys, totals, strict=True))
        ratio = {"generator accuracy": ("generator_correct", "masked"), "replacement rate": ("replaced", "masked"),
                 "copy accuracy replaced": ("copy_correct_replaced", "replaced_tokens"),
                 "copy accuracy original": ("copy_correct_original", "original_tokens"),
                 "clm accuracy replaced": ("clm_correct_replaced", "replaced"),
                 "scl accuracy": ("scl_correct", "scl_rows")}
        out = {name: c[num] / c[den].clamp(min=1) for name, (num, den) in ratio.items() if num in c}
        tokens = (c["original_tokens"] + c["replaced_tokens"]).clamp(min=1)
        out["copy accuracy"] = (c["copy_correct_original"] + c["copy_correct_replaced"]) / tokens
        out["original share"] = c["original_tokens"] / tokens
        return out

    def training_pass(self, trainer, dataset):
        return self._pass(trainer, dataset, trainer.consumed_samples, forward_only=False)

    def validation_pass(self, trainer, dataset, consumed):
        return self._pass(trainer, dataset, consumed, forward_only=True)

    # -- cost ----------------------------------------------------------------------------------------------
    def flops_per_token(self) -> float:
        """3 x forward of: the main model (its LM head at the masked positions, without the transform for the
        projection head; the copy head everywhere), the generator (MLM head at the masked positions) and, with SCL,
        one more main forward on the (padded) crop."""
        run, cfg = self.run, self.cfg
        s, fraction, mb, h = run.data.seq_length, run.data.mask_prob, run.train.micro_batch_size, run.model.hidden_size
        main = forward_flops_per_token(run.model, s, fraction, mb) + 2.0 * h
        if cfg.clm_head == "projection":
            main -= 2.0 * fraction * h * h
        generator = forward_flops_per_token(self.generator_config(), s, fraction, mb)
        crop = forward_flops_per_token(run.model, s, 0.0, mb) if cfg.scl else 0.0
        return 3.0 * (main + generator + crop)


register_objective("coco-lm", CocoLM)
