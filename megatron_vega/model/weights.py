"""Weights by global name: layout-independent initialisation, loading a full state dict into TP/PP shards, and
gathering shards back. A parameter's global name does not depend on TP/PP (layer indices are global, the last
stage's tied output weight is called ``word_embeddings.weight``, a second model's names start with its name), so
the same seed gives the same model on any layout and a full state dict maps onto any layout."""

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_vega.model.seeding import name_seeded_generator
from megatron_vega.model.vega_model import VegaModel


def global_name(model: VegaModel, name: str) -> str:
    """The layout-independent name; a second model of an objective (model.name, e.g. "generator") prefixes it,
    the main model (name "") keeps the bare names existing checkpoints and the HF mapping use."""
    if name.startswith("layers."):
        _, idx, rest = name.split(".", 2)
        name = f"layers.{model.first_layer + int(idx)}.{rest}"
    elif name == "output_weight":
        name = "word_embeddings.weight"
    prefix = getattr(model, "name", "")
    return f"{prefix}.{name}" if prefix else name


def _shard(full: torch.Tensor, param: torch.nn.Parameter) -> torch.Tensor:
    """This TP rank's slice of a full tensor (megatron-core tags split params with partition_dim)."""
    if not getattr(param, "tensor_model_parallel", False):
        return full
    dim = param.partition_dim
    size = param.shape[dim]
    rank = parallel_state.get_tensor_model_parallel_rank()
    return full.narrow(dim, rank * size, size)


def full_shape(param: torch.nn.Parameter) -> list[int]:
    shape = list(param.shape)
    if getattr(param, "tensor_model_parallel", False):
        shape[param.partition_dim] *= parallel_state.get_tensor_model_parallel_world_size()
    return shape


def _initial_value(name: str, shape: list[int], std: float, seed: int) -> torch.Tensor:
    if "layernorm" in name and name.endswith("weight"):
        return torch.ones(shape)
    if name.endswith("bias"):
        return torch.zeros(shape)
    return torch.randn(shape, generator=name_seeded_generator(seed, name)) * std


@torch.no_grad()
def init_weights(chunks: list[VegaModel], seed: int) -> None:
    """Normal(0, std) weights, zero biases, unit LayerNorms: each drawn from (seed, global name) alone."""
    for model in chunks:
        for name, p in model.named_parameters():
            full = _initial_value(global_name(model, name), full_shape(p), model.cfg.init_method_std, seed)
            p.copy_(_shard(full, p))


@torch.no_grad()
def load_full_state_dict(chunks: list[VegaModel], state: dict[str, torch.Tensor], strict: bool = True) -> list[str]:
    """Copy full (unsharded) tensors into this rank's shards; returns the global names it found no tensor for."""
    missing = []
    for model in chunks:
        for name, p in model.named_parameters():
            key = global_name(model, name)
            if key not in state:
                missing.append(key)
                continue
            p.copy_(_shard(state[key].to(p.dtype), p))
    if strict and missing:
        raise KeyError(f"no tensor for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return missing


@torch.no_grad()
def gather_full_state_dict(chunks: list[VegaModel], grads: bool = False) -> dict[str, torch.Tensor]:
    """Full tensors (fp32, CPU) on every rank: TP shards all-gathered, pipeline stages exchanged.
    With ``grads`` the parameters' gradients instead (main_grad under megatron-core DDP)."""
    tp_group = parallel_state.get_tensor_model_parallel_group()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    local = {}
    for model in chunks:
        for name, p in model.named_parameters():
            t = (getattr(p, "main_grad", None) if grads else None)
            t = (p.grad if grads and t is None else t if grads else p).detach().float()
            if tp > 1 and getattr(p, "tensor_model_parallel", False):
                parts = [torch.empty_like(t) for _ in range(tp)]
                dist.all_gather(parts, t.contiguous(), group=tp_group)
                t = torch.cat(parts, dim=p.partition_dim)
            local[global_name(model, name)] = t.cpu()
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return local
    stages = [None] * parallel_state.get_pipeline_model_parallel_world_size()
    dist.all_gather_object(stages, local, group=parallel_state.get_pipeline_model_parallel_group())
    merged = {}
    for stage in stages:
        merged.update(stage)
    return merged


def sharded_state_dict(chunks: list[VegaModel]) -> dict:
    """dist_checkpointing view of this rank's parameters under their global names, so a checkpoint loads into any
    TP/PP/DP layout. Each stored tensor has exactly one main replica: the tied output weight of the last stage and
    the relative-embedding copies of later chunks are marked as replicas (loaded, never written). A rank holding
    one global name twice (the relative table of each virtual chunk) gets one entry per copy, the later ones under
    ``<name>@<chunk>`` (the stored key stays the global name): the optimizer finds each of its parameters here."""
    from megatron.core.utils import make_sharded_tensor_for_checkpoint, make_tp_sharded_tensor_for_checkpoint
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    dp_rank = parallel_state.get_data_parallel_rank()
    # Replica ids of duplicates differ per chunk of a rank: two identical ids on one rank are refused.
    duplicate_base = 1 + parallel_state.get_pipeline_model_parallel_rank() * len(chunks)
    out = {}
    for chunk_index, model in enumerate(chunks):
        first_chunk = model.pre_process  # the chunk holding layer 0 of its model: the one main copy
        for name, p in model.named_parameters():
            key = global_name(model, name)
            duplicate = name == "output_weight" or (getattr(p, "pipeline_parallel", False) and not first_chunk)
            replica_rank = duplicate_base + chunk_index
            if getattr(p, "tensor_model_parallel", False):
                replica = (replica_rank, 0, dp_rank) if duplicate else None
                sharded = make_tp_sharded_tensor_for_checkpoint(p, key, tp_axis=p.partition_dim, replica_id=replica)
            else:
                replica = (replica_rank, tp_rank, dp_rank) if duplicate else None
                sharded = make_sharded_tensor_for_checkpoint(p, key, replica_id=replica)
            out[key if key not in out else f"{key}@{chunk_index}"] = sharded
    return out


def stored_name(entry: str) -> str:
    """The global name of a ``sharded_state_dict`` entry (``name@chunk`` for a rank's second copy)."""
    return entry.split("@", 1)[0]


def parameters_by_global_name(chunks: list[VegaModel]) -> dict[str, list[torch.nn.Parameter]]:
    """Global name -> the local parameters holding it (two when a rank holds the tied weight twice)."""
    out: dict[str, list[torch.nn.Parameter]] = {}
    for model in chunks:
        for name, p in model.named_parameters():
            out.setdefault(global_name(model, name), []).append(p)
    return out
