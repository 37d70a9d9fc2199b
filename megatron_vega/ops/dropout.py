"""Dropout whose mask is drawn fast on CPU.

PyTorch's CPU dropout (bernoulli_) takes one serial mt19937 draw per element (its vectorised MKL generator is used
on Intel CPUs only). Here the mask comes from four 15-bit lanes of each 64-bit draw of a generator seeded by one
draw of the current generator (so the RNG tracker's forks and seeds decide it, as for F.dropout), about eight times
faster (BENCHMARKS.md, "Dropout masks"). p is rounded to the 2^-15 grid and the scale matches the rounded p, so
the dropout stays unbiased. Other devices use F.dropout.
"""
import torch
import torch.nn.functional as F

DROPOUT_BITS = 15


def dropout_grid(p: float) -> tuple[int, float]:
    """(threshold, 1 / (1 - p')) for p' = threshold / 2^15, the dropout probability on the grid the CPU mask is
    drawn on (0.1 -> 0.100006)."""
    threshold = round(p * 2 ** DROPOUT_BITS)
    return threshold, (0.0 if threshold >= 2 ** DROPOUT_BITS else 1.0 / (1.0 - threshold / 2 ** DROPOUT_BITS))


def draw_seed() -> int:
    """One draw of the current generator (default or forked): seeds a mask's own generator."""
    return int(torch.randint(2 ** 62, ()))


def draw_keep(keep: torch.Tensor, threshold: int, seed: int) -> torch.Tensor:
    """keep (uint8) = 1 with probability 1 - threshold / 2^15, deterministic in ``seed``. uint8, not bool:
    x * uint8 runs vectorised, x * bool converts the mask element by element first."""
    n = keep.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(generator=torch.Generator().manual_seed(seed))
    lanes = bits.view(torch.int16)[:n].view(keep.shape).bitwise_and_(2 ** DROPOUT_BITS - 1)
    torch.ge(lanes, threshold, out=keep.view(torch.bool))
    return keep


class _CpuDropout(torch.autograd.Function):
    """x * keep / (1 - p'); saves only the uint8 mask (as F.dropout saves its bool mask)."""

    @staticmethod
    def forward(ctx, x, p: float):
        threshold, inv = dropout_grid(p)
        keep = draw_keep(torch.empty(x.shape, dtype=torch.uint8), threshold, draw_seed())
        ctx.save_for_backward(keep)
        ctx.inv = inv
        return torch.mul(x, keep).mul_(inv)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return torch.mul(grad, keep).mul_(ctx.inv), None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """F.dropout(x, p, training), with the mask drawn as above on CPU."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    return _CpuDropout.apply(x, p)
