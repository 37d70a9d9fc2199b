"""Fine-tuning checkpoints (``finetune_superglue.py --save``) to and from transformers.

BoolQ / CB / RTE / MultiRC become ``DebertaV2ForSequenceClassification`` and COPA ``DebertaV2ForMultipleChoice``:
the heads (``finetune/tasks.build_head``) already carry transformers' names (``pooler.dense``, ``classifier``) and
compute what transformers' ContextPooler + classifier compute. WiC / WSC / ReCoRD heads pool token spans, which no
transformers class does: the encoder becomes a ``DebertaV2Model`` and the head goes to ``head.safetensors`` with a
README saying how to apply it (``span_heads.load_span_head`` does it).
"""
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from megatron_vega.config import ModelConfig, ParallelConfig
from megatron_vega.convert.hf_mapping import from_hf, hf_config_dict, to_hf
from megatron_vega.convert.hf_tasks import (
    ARCHITECTURES,
    CHOICE_TASKS,
    HEAD_FILE,
    SEQUENCE_TASKS,
    SPAN_TASKS,
    check_known_task,
    check_labels,
    expected_classifier_rows,
    head_readme,
    label_texts,
    task_config_fields,
)
from megatron_vega.errors import VegaInputError
from megatron_vega.model.attention_inputs import AttentionInputs

DEFAULT_CLS_DROPOUT = 0.1  # finetune_superglue.py's --cls-dropout default, for checkpoints that do not record it


def _task_model(task: str, cfg: ModelConfig, cls_dropout: float, tp: int = 1):
    from megatron_vega import runtime
    from megatron_vega.finetune.task_model import build_task_model
    from megatron_vega.model.build import transformer_config
    runtime.init_model_parallel(tp, 1)
    par = ParallelConfig(tensor_model_parallel_size=tp)
    return build_task_model(task, cfg, transformer_config(cfg, par), cls_dropout, seed=0)


# -- to Hugging Face -----------------------------------------------------------------------------------------------
def check_finetune_checkpoint(load: str, meta: dict) -> str:
    """The task, once the checkpoint's head and recorded labels are known to fit it (read without loading)."""
    from megatron.core import dist_checkpointing

    from megatron_vega.training.checkpointing import checkpoint_path
    task = check_known_task(meta.get("task"), load)
    recorded = meta.get("labels")
    if recorded is not None and list(recorded) != label_texts(task):
        raise VegaInputError(load, f"the checkpoint's labels {recorded} do not match {task}'s {label_texts(task)}")
    shapes = {k: list(v.global_shape) for k, v in
              dist_checkpointing.load_tensors_metadata(str(checkpoint_path(load))).items()}
    rows = shapes.get("classifier.weight", [None])[0]
    if rows != expected_classifier_rows(task):
        raise VegaInputError(load, f"the checkpoint's classifier has {rows} output rows; a {task} head has "
                                   f"{expected_classifier_rows(task)}")
    return task


def hf_task_config(cfg: ModelConfig, meta: dict) -> dict:
    task = meta["task"]
    return {**hf_config_dict(cfg, ARCHITECTURES[task]),
            **task_config_fields(task, meta.get("cls_dropout", DEFAULT_CLS_DROPOUT))}


def export_rank(load: str, meta: dict, out: str, tokenizer_model: str | None) -> None:
    """Load encoder + head at TP=1 and write the HF directory on rank 0."""
    import torch.distributed as dist

    from megatron_vega.convert.checkpoints import model_config_of, write_hf_dir
    from megatron_vega.finetune import checkpoint
    from megatron_vega.model.weights import gather_full_state_dict
    task = meta["task"]
    cfg = model_config_of(load)
    model = _task_model(task, cfg, meta.get("cls_dropout", DEFAULT_CLS_DROPOUT))
    checkpoint.load(load, model, with_head=True)
    state = to_hf(gather_full_state_dict([model.encoder]), cfg)
    head = {name: p.detach().float().cpu().contiguous() for name, p in model.head.named_parameters()}
    files = {}
    if task in SPAN_TASKS:  # DebertaV2Model: the base model's names, without the "deberta." prefix
        state = {k.removeprefix("deberta."): v for k, v in state.items()}
        files[HEAD_FILE] = (head, {"task": task, "hidden_size": json.dumps(cfg.hidden_size),
                                   "labels": json.dumps(label_texts(task))})
        files["README.md"] = head_readme(task, cfg.hidden_size, label_texts(task), meta.get("seq_length"))
    else:
        state.update(head)
    if dist.get_rank() == 0:
        write_hf_dir(out, hf_task_config(cfg, meta), state, tokenizer_model, files)


def _inputs(cfg: ModelConfig, task: str, rows: int = 4, seq: int = 40):
    """A padded random batch (ids 5+, [CLS] first) and, for span heads, spans inside each row's real tokens."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, cfg.vocab_size, (rows, seq), generator=gen)
    lengths = [seq, seq - 9, seq // 2, seq - 3][:rows]
    mask = (torch.arange(seq)[None] < torch.tensor(lengths)[:, None]).long()
    spans = [(i, start, start + width) for i, n in enumerate(lengths)
             for start, width in ((1, 2), (n // 2, 3))] if task in SPAN_TASKS else []
    return ids * mask, mask, torch.tensor(spans, dtype=torch.long).view(-1, 3)


def verify_rank(load: str, meta: dict, out: str, diffs: list) -> None:
    """Largest |logit difference| (and, for span tasks, encoder-state difference over real tokens) between this
    framework and transformers on the same padded batch, fp32, dropout off."""
    import transformers

    from megatron_vega.convert.checkpoints import model_config_of
    from megatron_vega.convert.span_heads import load_span_head
    from megatron_vega.finetune import checkpoint
    task = meta["task"]
    cfg = model_config_of(load)
    model = _task_model(task, cfg, meta.get("cls_dropout", DEFAULT_CLS_DROPOUT))
    checkpoint.load(load, model, with_head=True)
    model.eval()
    hf = getattr(transformers, ARCHITECTURES[task]).from_pretrained(out).eval()
    ids, mask, spans = _inputs(cfg, task)
    with torch.no_grad():
        ours = model({"tokens": ids, "padding_mask": mask, "spans": spans})
        if task in SEQUENCE_TASKS:
            diffs.append({"logit": (ours - hf(input_ids=ids, attention_mask=mask).logits).abs().max().item()})
        elif task in CHOICE_TASKS:
            theirs = hf(input_ids=ids.view(-1, 2, ids.shape[1]), attention_mask=mask.view(-1, 2, ids.shape[1]))
            diffs.append({"logit": (ours - theirs.logits).abs().max().item()})
        else:
            states = hf(input_ids=ids, attention_mask=mask).last_hidden_state
            our_states = model.encoder(ids, AttentionInputs(mask)).transpose(0, 1)
            real = mask.bool()
            diffs.append({"encoder state": (our_states[real] - states[real]).abs().max().item(),
                          "head logit": (ours - load_span_head(out)(states, spans)).abs().max().item()})


# -- from Hugging Face ---------------------------------------------------------------------------------------------
def finetune_extra(cfg: ModelConfig, task: str, tokenizer_model: str | None, cls_dropout: float) -> dict:
    """The ``extra`` of a fine-tuning checkpoint (as ``finetune/run.py`` writes it)."""
    return {"config": {"model": asdict(cfg), **({"data": {"tokenizer_model": tokenizer_model}}
                                                if tokenizer_model else {})},
            "finetune": {"task": task, "dev": None, "labels": label_texts(task), "cls_dropout": cls_dropout}}


def task_head_of(hf_dir: str, hf_cfg: dict, head: dict, task: str | None) -> tuple[str | None, dict]:
    """(task, head tensors) of an HF directory: the pooler/classifier keys of a task class, or the
    ``head.safetensors`` of an exported span head; (None, {}) without a head."""
    span_file = Path(hf_dir) / HEAD_FILE
    if not head and span_file.is_file():
        from safetensors import safe_open
        from safetensors.torch import load_file
        with safe_open(str(span_file), "pt") as f:
            recorded = f.metadata().get("task")
        if task and task != recorded:
            raise VegaInputError(str(span_file), f"holds a {recorded} head, not a {task} one")
        return recorded, load_file(span_file)
    return task or (hf_cfg.get("superglue_task") if head else None), head


def check_head(hf_dir: str, hf_cfg: dict, task: str, head: dict) -> None:
    check_known_task(task, "--task")
    where = str(Path(hf_dir) / "config.json")
    rows = head.get("classifier.weight", torch.empty(0)).shape[0]
    if rows != expected_classifier_rows(task):
        raise VegaInputError(hf_dir, f"the classifier has {rows} output rows; a {task} head has "
                                     f"{expected_classifier_rows(task)}")
    arch = (hf_cfg.get("architectures") or [ARCHITECTURES[task]])[0]
    if task not in SPAN_TASKS and arch != ARCHITECTURES[task]:
        raise VegaInputError(where, f"a {arch} is not a {task} model (that is a {ARCHITECTURES[task]})")
    if hf_cfg.get("pooler_hidden_act", "gelu") != "gelu":
        raise VegaInputError(where, f"pooler_hidden_act {hf_cfg['pooler_hidden_act']!r}: this framework's "
                                    "heads use gelu")
    check_labels(task, hf_cfg, where)


def import_rank(cfg: ModelConfig, task: str, encoder_hf: dict, head: dict, save: str, extra: dict, tp: int) -> None:
    """Build encoder + head at TP, fill them, write a fine-tuning checkpoint (iteration 0). Collective."""
    from megatron_vega.finetune import checkpoint
    from megatron_vega.model.weights import load_full_state_dict
    model = _task_model(task, cfg, extra["finetune"]["cls_dropout"], tp)
    load_full_state_dict([model.encoder], from_hf(encoder_hf, cfg))
    missing, unexpected = model.head.load_state_dict(head, strict=False)
    if missing or unexpected:
        raise VegaInputError(task, f"head tensors do not fit: missing {missing}, unexpected {unexpected}")
    checkpoint.save(save, 0, model, extra)


def shipped_tokenizer(hf_dir: str, save: str) -> str | None:
    """Where the HF directory's sentencepiece model goes next to the checkpoint (recorded in it), if it has one."""
    return str((Path(save) / "spm.model").resolve()) if (Path(hf_dir) / "spm.model").is_file() else None


def ship_tokenizer(hf_dir: str, save: str) -> None:
    """Copy the sentencepiece model once the checkpoint is written (a failed import leaves nothing behind)."""
    if shipped_tokenizer(hf_dir, save):
        shutil.copyfile(Path(hf_dir) / "spm.model", Path(save) / "spm.model")
