"""Checkpoint conversions: to and from Hugging Face DebertaV2, and resharding to another TP/PP layout.

A pretraining checkpoint maps to ``DebertaV2ForMaskedLM``; a fine-tuning one (its ``extra`` names the task) to the
task's transformers class (``finetuned.py``). Imports accept what transformers writes: either MLM-head naming, an
encoder without an MLM head (a fresh seeded one is added, and said), and task classes (into a fine-tuning
checkpoint with ``--task`` or the task recorded in config.json, else the encoder alone, said too).

Each conversion runs in as many processes as the layout it reads or writes needs (spawned here with the machine's
backend unless launched by torchrun), loads through dist_checkpointing, and publishes its output atomically: it is
written under a temporary name and renamed at the end; an existing target is never overwritten.
"""
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from megatron_vega.config import ModelConfig, ParallelConfig, inherited
from megatron_vega.convert import finetuned, glm_export
from megatron_vega.convert.hf_mapping import (
    MLM_HEAD_KEYS,
    canonical_hf_names,
    fresh_mlm_head,
    from_hf,
    hf_config_dict,
    model_config_from_hf,
    split_task_head,
    to_hf,
    unsupported_hf_features,
)
from megatron_vega.errors import VegaInputError


def refuse_existing(path: str) -> None:
    if Path(path).exists():
        raise VegaInputError(path, "already exists; choose a new output path (conversions never overwrite)")


def run_distributed(world: int, fn, *args) -> None:
    """fn(*args) in `world` ranks: here if torchrun launched us with that world, else in spawned processes."""
    if int(os.environ.get("WORLD_SIZE", 1)) == world and ("RANK" in os.environ or world == 1):
        from megatron_vega import runtime
        runtime.init_distributed()
        fn(*args)
        return
    import tempfile

    import torch.multiprocessing as mp
    # A file rendezvous: a port found free here can be taken by another process before the ranks bind it.
    with tempfile.TemporaryDirectory(prefix="vega-convert-") as tmp:
        mp.spawn(_spawned, args=(world, f"file://{tmp}/store", fn, args), nprocs=world, join=True)


def _spawned(rank, world, init_method, fn, args):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), VEGA_INIT_METHOD=init_method)
    from megatron_vega import runtime
    runtime.init_distributed()
    fn(*args)


def model_config_of(load: str, iteration: int | None = None) -> ModelConfig:
    from megatron_vega.training.checkpointing import read_extra
    return ModelConfig(**inherited(read_extra(load, iteration)["config"]["model"]))


def _build(cfg: ModelConfig, tp: int = 1, pp: int = 1, with_mlm_head: bool = True, name: str = ""):
    from megatron_vega import runtime
    from megatron_vega.model.build import build_model, transformer_config
    from megatron_vega.model.heads import MLM_HEAD
    runtime.init_model_parallel(tp, pp)
    par = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    return build_model(cfg, transformer_config(cfg, par), heads=(MLM_HEAD,) if with_mlm_head else (), name=name)


GENERATOR = "generator"  # the name of COCO-LM's auxiliary generator in its checkpoints (docs/coco_lm.md)


def generator_config_of(load: str, iteration: int | None = None) -> ModelConfig:
    """The model config of the auxiliary generator a COCO-LM checkpoint holds (from its saved objective flags)."""
    from megatron_vega.objectives.arguments import objective_for_checkpoint
    from megatron_vega.training.arguments import RunConfig
    from megatron_vega.training.checkpointing import read_extra
    saved = read_extra(load, iteration)["config"].get("objective", {})
    objective = objective_for_checkpoint(RunConfig(model=model_config_of(load, iteration)), saved)
    if not hasattr(objective, "generator_config"):
        raise VegaInputError("--generator", f"{load} was trained with --objective {saved.get('objective', 'mlm')}: "
                                            "it holds no generator (coco-lm checkpoints do)")
    return objective.generator_config()


def exported_model(load: str, iteration: int | None, generator: bool) -> tuple[ModelConfig, str, bool]:
    """(config, model name, with MLM head) of the model to-hf exports: the main encoder, or the generator."""
    if generator:
        return generator_config_of(load, iteration), GENERATOR, True
    return model_config_of(load, iteration), "", has_mlm_head(load, iteration)


def has_mlm_head(load: str, iteration: int | None = None) -> bool:
    """Whether a pretraining checkpoint holds an MLM head: COCO-LM's main model with its corrective projection
    head (docs/coco_lm.md) does not, and exports as the encoder alone (DebertaV2Model). Names of further models
    (``generator.*``) and heads the converter does not know are left out of the export."""
    from torch.distributed.checkpoint import FileSystemReader

    from megatron_vega.training.checkpointing import checkpoint_path
    stored = FileSystemReader(str(checkpoint_path(load, iteration))).read_metadata().state_dict_metadata
    return "lm_head.dense.weight" in stored


# -- to Hugging Face -----------------------------------------------------------------------------------------------
def hf_tokenizer_files(tokenizer_model: str, max_length: int) -> dict[str, str]:
    """tokenizer_config.json and special_tokens_map.json naming the pieces this framework uses as [CLS], [SEP],
    [MASK], [PAD], [UNK] (a foreign model's <s>, </s>, ...), and the ids it appends for missing ones, so that
    ``DebertaV2Tokenizer.from_pretrained`` gives the same ids as ``VegaTokenizer``."""
    from megatron_vega.data.tokenizer import VegaTokenizer
    tok = VegaTokenizer(tokenizer_model)
    pieces = tok.vocab_size - len(tok.appended)
    specials = {name: tok.id_to_piece(i) for name, i in (
        ("bos_token", tok.cls_id), ("eos_token", tok.sep_id), ("unk_token", tok.unk_id), ("sep_token", tok.sep_id),
        ("pad_token", tok.pad_id), ("cls_token", tok.cls_id), ("mask_token", tok.mask_id))}
    added = {str(pieces + i): {"content": name, "lstrip": False, "normalized": False, "rstrip": False,
                               "single_word": False, "special": True} for i, name in enumerate(tok.appended)}
    config = {"tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": False, "split_by_punct": False,
              "model_max_length": max_length, **specials, **({"added_tokens_decoder": added} if added else {})}
    return {"tokenizer_config.json": json.dumps(config, indent=2) + "\n",
            "special_tokens_map.json": json.dumps(specials, indent=2) + "\n"}


def write_hf_dir(out: str, config: dict, hf_state: dict, tokenizer_model: str | None, files: dict | None = None
                 ) -> None:
    """config.json + model.safetensors (+ tokenizer files, + ``files``: name -> text, or (tensors, metadata) for a
    safetensors file), published atomically."""
    from safetensors.torch import save_file
    tmp = Path(out + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(hf_state, tmp / "model.safetensors", metadata={"format": "pt"})
    if tokenizer_model:
        shutil.copyfile(tokenizer_model, tmp / "spm.model")
        for name, text in hf_tokenizer_files(tokenizer_model, config["max_position_embeddings"]).items():
            (tmp / name).write_text(text)
    for name, content in (files or {}).items():
        if isinstance(content, str):
            (tmp / name).write_text(content)
        else:
            save_file(content[0], tmp / name, metadata={"format": "pt", **content[1]})
    os.replace(tmp, out)


def _to_hf_rank(load: str, out: str, iteration: int | None, tokenizer_model: str | None,
                generator: bool = False) -> None:
    import torch.distributed as dist

    from megatron_vega.model.weights import gather_full_state_dict
    from megatron_vega.training.checkpointing import load as load_checkpoint
    from megatron_vega.training.checkpointing import read_extra
    cfg, name, with_head = exported_model(load, iteration, generator)
    chunks = _build(cfg, with_mlm_head=with_head, name=name)
    load_checkpoint(load, chunks, None, None, with_optimizer=False, with_rng=False, iteration=iteration)
    prefix = f"{name}." if name else ""
    full = {k.removeprefix(prefix): v for k, v in gather_full_state_dict(chunks).items()}
    glm = glm_export.is_glm_checkpoint(read_extra(load, iteration))
    full, glm_extras = glm_export.split_glm_state(full, cfg) if glm else (full, {})
    table = glm_extras.pop("table", None)
    state = {**to_hf(full, cfg), **glm_extras}
    if not with_head:  # DebertaV2Model: the base model's names, without the "deberta." prefix
        state = {k.removeprefix("deberta."): v for k, v in state.items()}
    if dist.get_rank() == 0:
        config = hf_config_dict(cfg, "DebertaV2ForMaskedLM" if with_head else "DebertaV2Model")
        files = {}
        if glm:
            config = glm_export.glm_hf_config(config, cfg, table is not None)
            if tokenizer_model:
                files = glm_export.glm_tokenizer_files(hf_tokenizer_files(tokenizer_model, cfg.max_position_embeddings),
                                                       cfg.vocab_size)
            if table is not None:
                files[glm_export.BLOCK_POSITIONS_FILE] = ({glm_export.TABLE: table},
                                                          {"what": "GLM position-2 table (docs/glm_and_cloze.md)"})
        write_hf_dir(out, config, state, tokenizer_model, files)


def checkpoint_kind(load: str, iteration: int | None = None) -> dict | None:
    """None for a pretraining checkpoint; a fine-tuning one's ``finetune`` metadata (task, labels, ...)."""
    from megatron_vega.training.checkpointing import latest_iteration, read_extra
    extra = read_extra(load, iteration)
    if "model" not in extra.get("config", {}):
        raise VegaInputError(load, "not a checkpoint this converter knows (no model config in it)")
    if "finetune" not in extra:
        return None
    if iteration is not None and iteration != latest_iteration(load):
        raise VegaInputError("--iteration", "a fine-tuning checkpoint exports its latest (best-dev) model only")
    return extra["finetune"]


def recorded_tokenizer(load: str, iteration: int | None) -> str | None:
    from megatron_vega.training.checkpointing import read_extra
    path = read_extra(load, iteration)["config"].get("data", {}).get("tokenizer_model")
    return path if path and Path(path).is_file() else None


def to_hf_dir(load: str, out: str, iteration: int | None = None, tokenizer_model: str | None = None,
              generator: bool = False) -> str:
    """A dist checkpoint of any layout -> an HF directory: DebertaV2ForMaskedLM for a pretraining checkpoint, the
    task's class for a fine-tuning one; with ``generator`` a COCO-LM checkpoint's generator as its own
    DebertaV2ForMaskedLM. The tokenizer defaults to the one the checkpoint records. Returns a line saying what was
    written."""
    refuse_existing(out)
    glm_table = model_config_of(load, iteration).block_position_embeddings  # fails early on a broken checkpoint
    meta = checkpoint_kind(load, iteration)
    if glm_table and meta is not None:
        raise VegaInputError(load, "a fine-tuned GLM model (its position-2 table) exports as pretraining checkpoints "
                                   "only (docs/glm_and_cloze.md)")
    if tokenizer_model and not Path(tokenizer_model).is_file():
        raise VegaInputError(tokenizer_model, "tokenizer model not found")
    tokenizer_model = tokenizer_model or recorded_tokenizer(load, iteration)
    if generator:
        if meta is not None:
            raise VegaInputError("--generator", f"{load} is a fine-tuning checkpoint: it holds no generator")
        cfg = generator_config_of(load, iteration)  # refuses a checkpoint without one, before any process starts
        run_distributed(1, _to_hf_rank, load, out, iteration, tokenizer_model, True)
        return (f"wrote {out}: DebertaV2ForMaskedLM (the COCO-LM generator: {cfg.num_layers} layers, hidden "
                f"{cfg.hidden_size})")
    if meta is None:
        run_distributed(1, _to_hf_rank, load, out, iteration, tokenizer_model)
        if not has_mlm_head(load, iteration):
            return f"wrote {out}: DebertaV2Model (the encoder; the checkpoint has no MLM head)"
        if glm_table:
            return (f"wrote {out}: DebertaV2ForMaskedLM (GLM: Part A's position-2 row as its absolute position input; "
                    f"the whole position-2 table in {glm_export.BLOCK_POSITIONS_FILE})")
        return f"wrote {out}: DebertaV2ForMaskedLM"
    task = finetuned.check_finetune_checkpoint(load, meta)
    run_distributed(1, finetuned.export_rank, load, meta, out, tokenizer_model)
    arch = finetuned.ARCHITECTURES[task]
    if task in finetuned.SPAN_TASKS:
        return (f"wrote {out}: {arch} (the encoder) + {finetuned.HEAD_FILE} (the {task} span head, which "
                "transformers has no class for; README.md says how to apply it)")
    return f"wrote {out}: {arch} for {task}, labels {finetuned.label_texts(task)}"


def verify_hf_dir(load: str, out: str, iteration: int | None = None, generator: bool = False) -> str:
    """A line with the largest difference between this framework and transformers on a padded random batch (fp32):
    MLM logits, task logits, or (span tasks) encoder states and head logits."""
    diffs = []
    meta = checkpoint_kind(load, iteration)
    if meta is None:
        run_distributed(1, _verify_rank, load, out, iteration, diffs, generator)
        what = "MLM logit" if generator or has_mlm_head(load, iteration) else "encoder state"
        return f"verify: largest |{what} difference| vs transformers = {diffs[0]:.3e}"
    run_distributed(1, finetuned.verify_rank, load, meta, out, diffs)
    return "verify: " + "; ".join(f"largest |{k} difference| vs transformers = {v:.3e}" for k, v in diffs[0].items())


def _verify_rank(load, out, iteration, diffs, generator=False):
    from transformers import DebertaV2ForMaskedLM, DebertaV2Model

    from megatron_vega.model.attention_inputs import AttentionInputs
    from megatron_vega.training.checkpointing import load as load_checkpoint
    cfg, name, with_head = exported_model(load, iteration, generator)
    [model] = _build(cfg, with_mlm_head=with_head, name=name)
    load_checkpoint(load, [model], None, None, with_optimizer=False, with_rng=False, iteration=iteration)
    hf = (DebertaV2ForMaskedLM if with_head else DebertaV2Model).from_pretrained(out).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, cfg.vocab_size, (2, 48), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    model.eval()
    # a GLM model reads Part A with position 2 = 0 (the row its export folds into the absolute position input)
    block_ids = torch.zeros_like(ids) if cfg.block_position_embeddings else None
    with torch.no_grad():
        ours = model(ids * mask, AttentionInputs(mask, block_position_ids=block_ids))
        ours = (ours[..., :cfg.vocab_size] if with_head else ours).transpose(0, 1)
        # explicit position ids: in a process that built megatron models, transformers may leave DebertaV2's
        # non-persistent position_ids buffer uninitialised (a GLM export reads absolute positions)
        result = hf(input_ids=ids * mask, attention_mask=mask, position_ids=torch.arange(48).expand(2, -1))
        theirs = result.logits if with_head else result.last_hidden_state * mask[..., None]
        ours = ours if with_head else ours * mask[..., None]  # padded queries see nothing: compare real tokens
    diffs.append((ours - theirs).abs().max().item())


# -- from Hugging Face and resharding -----------------------------------------------------------------------------
def read_hf_dir(hf_dir: str) -> tuple[ModelConfig, dict, dict, list[str]]:
    """(model config, HF config.json, canonically named tensors, notes on what was left out) of an HF directory."""
    path = Path(hf_dir)
    if not (path / "config.json").is_file():
        raise VegaInputError(hf_dir, "no config.json: not a Hugging Face model directory")
    hf_cfg = json.loads((path / "config.json").read_text())
    if hf_cfg.get("model_type") != "deberta-v2":
        raise VegaInputError(str(path / "config.json"), f"model_type {hf_cfg.get('model_type')!r} is not deberta-v2")
    problems = unsupported_hf_features(hf_cfg)
    if problems:
        raise VegaInputError(str(path / "config.json"), "unsupported: " + "; ".join(problems))
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file
        state = load_file(path / "model.safetensors")
    elif (path / "pytorch_model.bin").is_file():
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise VegaInputError(hf_dir, "no model.safetensors or pytorch_model.bin")
    try:
        state, notes = canonical_hf_names(state)
    except ValueError as err:
        raise VegaInputError(hf_dir, str(err)) from None
    return ModelConfig(**model_config_from_hf(hf_cfg)), hf_cfg, state, notes


def _vega_state(hf_dir: str, hf: dict, cfg: ModelConfig) -> dict:
    try:
        return from_hf(hf, cfg)
    except KeyError as err:
        raise VegaInputError(hf_dir, str(err).strip("'\"")) from None


def _save_weights_rank(cfg: ModelConfig, full: dict, save: str, tp: int, pp: int) -> None:
    """Build the model at TP x PP, fill it from full tensors, save a weights-only checkpoint at iteration 0."""
    from megatron_vega.model.weights import load_full_state_dict
    from megatron_vega.training import checkpointing
    from megatron_vega.training.arguments import RunConfig
    chunks = _build(cfg, tp, pp)
    load_full_state_dict(chunks, full)
    run = RunConfig(model=cfg, parallel=ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp))
    checkpointing.save(save, 0, chunks, None, None, {"iteration": 0, "consumed_samples": 0, "config": asdict(run)})


def _check_layout(cfg: ModelConfig, tp: int, pp: int) -> None:
    ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp).validate(cfg, tp * pp)


def from_hf_dir(hf_dir: str, save: str, tp: int, pp: int, task: str | None = None, seed: int = 1234) -> list[str]:
    """An HF DebertaV2 directory -> a weights-only dist checkpoint written by a TP x PP layout: a pretraining one
    (MLM head kept, or freshly initialised from ``seed``), or a fine-tuning one when the directory holds a task
    head and the task is known (``task``, or the one to-hf recorded). Returns lines saying what it did."""
    refuse_existing(save)
    cfg, hf_cfg, state, notes = read_hf_dir(hf_dir)
    encoder_hf, task_head = split_task_head(state)
    task, task_head = finetuned.task_head_of(hf_dir, hf_cfg, task_head, task)
    if task and task_head:
        return notes + _import_finetuned(hf_dir, save, tp, pp, cfg, hf_cfg, task, encoder_hf, task_head)
    if task:
        raise VegaInputError("--task", f"{hf_dir} holds no task head (pooler.*, classifier.*) to import as {task}")
    if task_head:
        notes.append(f"left out the task head ({', '.join(sorted(task_head))}); give --task to import it into a "
                     "fine-tuning checkpoint")
    full = _vega_state(hf_dir, encoder_hf, cfg)
    present = [k for k in MLM_HEAD_KEYS if k in full]
    if not present:
        full.update(fresh_mlm_head(cfg, seed))
        notes.append(f"{hf_dir} has no MLM head: initialised a fresh one (seed {seed})")
    elif len(present) < len(MLM_HEAD_KEYS):
        raise VegaInputError(hf_dir, f"incomplete MLM head: no {sorted(set(MLM_HEAD_KEYS) - set(present))}")
    _check_layout(cfg, tp, pp)
    run_distributed(tp * pp, _save_weights_rank, cfg, full, save, tp, pp)
    return notes


def _import_finetuned(hf_dir, save, tp, pp, cfg, hf_cfg, task, encoder_hf, head) -> list[str]:
    finetuned.check_head(hf_dir, hf_cfg, task, head)
    if pp != 1:
        raise VegaInputError("--pipeline-model-parallel-size", "fine-tuning checkpoints have no pipeline stages")
    encoder_hf = {k: v for k, v in encoder_hf.items() if not k.startswith("lm_predictions.")}
    _vega_state(hf_dir, encoder_hf, cfg)  # refuse unexpected keys here, before any process starts
    _check_layout(cfg, tp, 1)
    cls_dropout = hf_cfg.get("cls_dropout", hf_cfg.get("hidden_dropout_prob", finetuned.DEFAULT_CLS_DROPOUT))
    extra = finetuned.finetune_extra(cfg, task, finetuned.shipped_tokenizer(hf_dir, save), cls_dropout)
    run_distributed(tp, finetuned.import_rank, cfg, task, encoder_hf, head, save, extra, tp)
    finetuned.ship_tokenizer(hf_dir, save)
    return [(f"{hf_dir}: {task} encoder and head -> fine-tuning checkpoint (finetune_superglue.py --task {task} "
             f"--load {save})")]


def reshard(load: str, save: str, tp: int, pp: int) -> None:
    """Rewrite a training checkpoint at TP x PP with everything it holds (training/reshard.py); dist checkpoints
    also load into any layout directly, so this is for moving a run, not a requirement for it."""
    from megatron_vega.objectives.arguments import objective_for_checkpoint
    from megatron_vega.training.reshard import reshard_rank
    refuse_existing(save)
    cfg = model_config_of(load)
    _check_layout(cfg, tp, pp)
    run_distributed(tp * pp, reshard_rank, load, save, tp, pp, objective_for_checkpoint)
