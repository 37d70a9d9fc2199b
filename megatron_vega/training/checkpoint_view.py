"""Reading a model's tensors from a checkpoint that stores some of them under other names, or not at all.

A model asks for its tensors by global name (model/weights.py). Two checkpoint layouts of COCO-LM
(docs/coco_lm.md, "Embedding sharing") do not hold every such name, and a model reading them gets:

- ``word_embeddings.weight`` from a checkpoint trained with ``--embedding-sharing gdes``, which stores the
  generator's table E (``generator.word_embeddings.weight``) and the main model's E_Δ
  (``word_embeddings.delta.weight``) but no main table: the sum E + E_Δ, the table the main model computes with.
  So fine-tuning, self-evolution, UniMC and ``to-hf`` read a gdes checkpoint's encoder as they read any other.
- ``generator.word_embeddings.weight`` from a checkpoint without it (``plain`` sharing, where the generator reads
  the main table, or a checkpoint with no generator at all, such as one imported from Hugging Face): the main
  model's table ``word_embeddings.weight``.

Anything else a checkpoint lacks is an error (``check_tensor_shapes``), unless the caller's ``fresh(key, stored)``
allows it to keep its initial value (a COCO-LM run started from an encoder-only checkpoint: objectives/base.py,
``fresh_if_missing``).
"""
from dataclasses import replace

import torch

from megatron_vega.errors import VegaInputError

MAIN_TABLE = "word_embeddings.weight"
GENERATOR_TABLE = "generator.word_embeddings.weight"
GDES_DELTA = "word_embeddings.delta.weight"


def stored_keys(path) -> set[str]:
    """The global names of the tensors a checkpoint directory holds."""
    from megatron.core.dist_checkpointing import load_tensors_metadata
    return set(load_tensors_metadata(str(path)))


def stored_sources(key: str, stored: set[str]) -> tuple[str, ...] | None:
    """The stored tensors whose sum is tensor ``key`` (itself when stored), or None."""
    if key in stored:
        return (key,)
    if key == MAIN_TABLE and {GENERATOR_TABLE, GDES_DELTA} <= stored:
        return GENERATOR_TABLE, GDES_DELTA
    if key == GENERATOR_TABLE and MAIN_TABLE in stored:
        return (MAIN_TABLE,)
    return None


class CheckpointView:
    """A model's sharded state dict (``weights.sharded_state_dict``) rewritten for one checkpoint: ``request`` is
    what to load, ``compose(loaded)`` gives back the model's entries; ``fresh`` lists the keys left out (kept at
    their initial values) and ``renamed`` those read from other names."""

    def __init__(self, model_state: dict, stored: set[str], fresh=None):
        from megatron.core.dist_checkpointing.mapping import ShardedTensor
        self.request, self.parts, self.fresh, self.renamed = {}, {}, [], []
        for name, entry in model_state.items():
            if not isinstance(entry, ShardedTensor) or entry.key in stored:
                self.request[name] = entry
                continue
            sources = stored_sources(entry.key, stored)
            if sources is None:
                if fresh is not None and fresh(entry.key, stored):
                    self.fresh.append(entry.key)
                elif entry.key.startswith("lm_head.") and "clm_head.bias" in stored:
                    raise VegaInputError("--load", "a coco-lm checkpoint trained with --clm-head projection has no "
                                         "MLM head (lm_head.*), which this command needs; pretrain with --clm-head "
                                         "mlm (fine-tuning reads the encoder only and loads either)")
                else:
                    self.request[name] = entry  # check_tensor_shapes names it as missing
                continue
            self.renamed.append(entry.key)
            self.parts[name] = [f"{name}#{i}" for i in range(len(sources))]
            for part, source in zip(self.parts[name], sources, strict=True):
                # separate buffers: two entries loading in place into one parameter would overwrite each other
                self.request[part] = replace(entry, key=source, data=torch.empty_like(entry.data))

    def compose(self, loaded: dict) -> dict:
        parts = {p for names in self.parts.values() for p in names}
        out = {name: tensor for name, tensor in loaded.items() if name not in parts}
        for name, names in self.parts.items():
            out[name] = sum(loaded[p] for p in names)
        return out


def load_model_tensors(path, model_state: dict, params: dict, fresh=None) -> CheckpointView:
    """Copy checkpoint ``path``'s tensors into the parameters of a sharded state dict (``params``: global name ->
    local parameters), through the view above. Collective."""
    from megatron.core import dist_checkpointing

    from megatron_vega.training.checkpoint_args import check_tensor_shapes
    view = CheckpointView(model_state, stored_keys(path), fresh)
    check_tensor_shapes(path, view.request)  # a model that does not match: one line, not a traceback
    loaded = view.compose(dist_checkpointing.load({"model": view.request}, str(path))["model"])
    copy_into(params, loaded)
    return view


@torch.no_grad()
def copy_into(params: dict, loaded: dict) -> None:
    from megatron_vega.model.weights import stored_name
    for key, tensor in loaded.items():
        for p in params[stored_name(key)]:
            p.copy_(tensor)
