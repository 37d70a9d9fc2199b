"""Which model a command builds: the one a checkpoint holds, else the flags; and the vocabulary a tokenizer needs.

A command given ``--load`` of a directory that holds a checkpoint builds the model saved in it (Megatron's
``--use-checkpoint-args``, always on): model flags left out come from the checkpoint, and a model flag given
explicitly (``--model-preset`` included) must agree with it, or the command stops with one line naming the flag and
both values. The exceptions are the run settings in ``LOAD_OVERRIDABLE`` (dropouts, the initialisation std): they
do not change a tensor or the function the weights compute, so an explicit value replaces the checkpoint's (a
fine-tuning or continued run often wants other dropouts).

Without a checkpoint (no ``--load``, or the first launch of a requeued job whose ``--load`` is its ``--save``) the
flags define the model, and with ``--tokenizer-model`` and no ``--vocab-size`` the vocabulary is the tokenizer's
(padded to ``--make-vocab-size-divisible-by`` as always). With a checkpoint the checkpoint's vocabulary wins, and
a tokenizer with more ids than it is refused.
"""
from dataclasses import fields
from pathlib import Path

from megatron_vega.cli import flag_name
from megatron_vega.config import LOAD_OVERRIDABLE, PRESETS, ModelConfig, inherited, model_preset
from megatron_vega.errors import VegaInputError

_FLAGS = {f.name: flag_name(f) for f in fields(ModelConfig)}


def saved_model_fields(load: str | None, save: str | None, ckpt_step: int | None, dry_run: bool) -> dict | None:
    """The model config stored in the checkpoint ``--load`` will read (``--ckpt-step``, else the latest); None for
    a fresh start. A dry run checks a recipe before its first launch, so a --load still empty is said, not refused."""
    if not load:
        return None
    from megatron_vega.training.checkpointing import latest_iteration, read_extra
    from megatron_vega.training.resume import checkpoint_to_load
    if dry_run and (not Path(load).is_dir() or latest_iteration(load) is None):
        print(f"note: {load} holds no checkpoint yet: the model below is the flags'")
        return None
    iteration = checkpoint_to_load(load, save, ckpt_step)
    if iteration is None:
        return None
    saved = read_extra(load, iteration).get("config", {}).get("model")
    if saved is None:
        raise VegaInputError(load, "the checkpoint holds no model config (extra.config.model)")
    unknown = sorted(set(saved) - set(_FLAGS))
    if unknown:
        raise VegaInputError(load, f"the checkpoint's model config has fields this version does not know: "
                                   f"{', '.join(unknown)}")
    return saved


def resolve_model(preset: str | None, explicit: dict, checkpoint, tokenizer, dry_run: bool = False) -> ModelConfig:
    """The model to build. ``preset``: --model-preset as given (None when left out); ``explicit``: the model flags
    given, by field name; ``checkpoint``: the run's CheckpointConfig; ``tokenizer``: the --tokenizer-model's
    VegaTokenizer (None without one, or not read)."""
    load = checkpoint.load
    saved = saved_model_fields(load, checkpoint.save, checkpoint.ckpt_step, dry_run)
    ids = None if tokenizer is None else tokenizer.vocab_size
    if saved is None:
        vocab = {} if ids is None or "vocab_size" in explicit else {"vocab_size": ids}
        cfg = model_preset(preset or "base", **{**vocab, **explicit})
        if ids is not None and ids > cfg.vocab_size:
            raise VegaInputError("--vocab-size", f"{cfg.vocab_size} is smaller than the {ids} ids of {tokenizer.path}; "
                                                 f"leave --vocab-size out to use the tokenizer's size")
        return cfg
    _check_agreement(preset, explicit, ModelConfig(**saved), load, with_tokenizer=ids is not None)
    cfg = ModelConfig(**{**inherited(saved), **{k: v for k, v in explicit.items() if k in LOAD_OVERRIDABLE}})
    if ids is not None and ids > cfg.vocab_size:
        raise VegaInputError("--tokenizer-model", f"{tokenizer.path} has {ids} ids but the checkpoint in {load} has "
                                                  f"a vocabulary of {cfg.vocab_size}; use the tokenizer it was "
                                                  f"trained with")
    return cfg


def _check_agreement(preset: str | None, explicit: dict, saved: ModelConfig, load: str, with_tokenizer: bool) -> None:
    """VegaInputError naming the first explicit flag whose value differs from the checkpoint's."""
    # A preset's vocabulary is not what a run with a tokenizer uses (the tokenizer sizes it), so it is not compared.
    from_preset = {k: v for k, v in PRESETS[preset].items() if not (k == "vocab_size" and with_tokenizer)} \
        if preset else {}
    for name, value in {**from_preset, **explicit}.items():
        have = getattr(saved, name)
        if name in LOAD_OVERRIDABLE or have == value:
            continue
        if name in explicit:
            raise VegaInputError(_FLAGS[name], f"{value} contradicts the checkpoint in {load} ({name} {have}); "
                                               f"leave the flag out to use the checkpoint's")
        raise VegaInputError("--model-preset", f"{preset} has {name} {value} but the checkpoint in {load} has "
                                               f"{have}; leave --model-preset out (the checkpoint defines the model)")


def check_tensor_shapes(path, model_state: dict) -> None:
    """Before loading checkpoint directory ``path`` into ``model_state`` (a sharded state dict): every tensor the
    model asks for exists there with the same global shape, else one VegaInputError line instead of a
    CheckpointingException traceback from the middle of the load."""
    from megatron.core.dist_checkpointing import load_tensors_metadata
    from megatron.core.dist_checkpointing.mapping import ShardedTensor
    stored = load_tensors_metadata(str(path))
    for tensor in model_state.values():
        if not isinstance(tensor, ShardedTensor):
            continue
        if tensor.key not in stored:
            raise VegaInputError(str(path), f"holds no tensor {tensor.key}: the model being built does not match "
                                            f"the checkpoint (other model flags?)")
        have, want = tuple(stored[tensor.key].global_shape), tuple(tensor.global_shape)
        if have != want:
            raise VegaInputError(str(path), f"{tensor.key} has shape {have} in the checkpoint but {want} in the "
                                            f"model being built (other model flags?)")
