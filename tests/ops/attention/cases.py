"""The mask and position cases every core is checked on (tests/ops/attention), with padding in every batch."""
import torch

from megatron_vega.ops.attention import CORES

B, S = 3, 12
# the cores that run CPU tensors (the Triton one is checked under the interpreter: tests/ops/triton)
CPU_CORES = [name for name, c in CORES.items() if c.support.runs(torch.device("cpu"), torch.float32)]


def padding() -> torch.Tensor:
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, S * 2 // 3:] = 0
    mask[2, S // 3:] = 0
    return mask


def case(name: str, seed: int = 0) -> dict:
    """AttentionInputs fields (besides padding_mask) of one case, as the batch would carry them."""
    gen = torch.Generator().manual_seed(seed)
    if name == "dense":  # any [b, s, s] mask; the diagonal kept so that no real query is left without a key
        return {"attention_mask": (torch.rand(B, S, S, generator=gen) < 0.6) | torch.eye(S, dtype=torch.bool)}
    if name == "prefix_causal":
        return {"prefix_lengths": torch.tensor([5, 0, 3])}
    if name == "blocks":  # shared context 0, then options 1..3 of uneven lengths
        return {"block_ids": torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 3]] * B)}
    if name == "positions":  # per sample: gaps (log buckets exercised), a repeat, a reversed order
        return {"position_ids": torch.stack([torch.arange(S) * 7, torch.arange(S).flip(0) * 3,
                                             torch.tensor([0, 1, 2, 3, 3, 4, 5, 40, 41, 42, 43, 44])])}
    if name == "all":
        return {**case("dense", seed), **case("prefix_causal"), **case("blocks"), **case("positions")}
    raise ValueError(name)


CASES = ("dense", "prefix_causal", "blocks", "positions", "all")
