"""SiFT, scale-invariant fine-tuning (docs/sift.md; DeBERTa's ``sift/sift.py``).

The word embeddings e go through a parameter-free LayerNorm ê = LN₀(e) (eps 1e-7) before the model's own
embedding LayerNorm, in the clean pass too. The adversarial passes replace ê by stopgrad(ê) + δ:
δ₀ = clamp(N(0, σ²), ±2σ); one ascent step δ₁ = δ₀ + η g / (1e-6 + max_H |g|) on the ascent loss (parameters
untouched: only δ's gradient is taken); then L = L_task + λ · mean SKL(f(ê + δ₁), f(ê)), clean logits not detached.

Tensor parallelism: ê and δ are replicated [s, b, H] tensors. δ₀ is drawn from the default RNG, which megatron
keeps identical on TP ranks (only the model-parallel tracker differs per rank), and δ's gradient is complete on
every rank because the first column-parallel layer all-reduces its input gradient. So δ is the same everywhere.
"""
import torch
import torch.nn.functional as F

LN0_EPS = 1e-7


def normalize(words):
    """ê = LN₀(e): the word embeddings [s, b, H] (replicated: the vocab-parallel lookup is all-reduced) in fp32."""
    return F.layer_norm(words.float(), words.shape[-1:], eps=LN0_EPS)


def _flat(logits):
    return logits.reshape(-1, logits.shape[-1]).float()


def symmetric_kl(logits, target):
    """Per row: CE(sg(p_target), p) + CE(sg(p), p_target). Its value includes both entropies; its gradient is
    that of KL(sg(p_target) || p) + KL(sg(p) || p_target): each side is pulled towards the other."""
    logp, logq = F.log_softmax(_flat(logits), -1), F.log_softmax(_flat(target), -1)
    return (logq.exp().detach() * -logp).sum(-1) + (logp.exp().detach() * -logq).sum(-1)


def kl(logits, target):
    logq = F.log_softmax(_flat(target).detach(), -1)
    return (logq.exp() * -F.log_softmax(_flat(logits), -1)).sum(-1)


def mse(logits, target):
    return F.mse_loss(_flat(logits).view(-1), _flat(target).view(-1))


ASCENT_LOSSES = {"symmetric-kl": symmetric_kl, "kl": kl, "mse": mse}


def sift_forward(logits_fn, cfg):
    """``logits_fn(hook)`` -> the batch's logits with ``hook`` as the encoder's embedding hook; ``cfg`` a
    SiftConfig. Returns the clean logits (the pass on ê) and the unweighted adversarial loss."""
    clean = {}

    def normalized(words, tokens):
        clean["ê"] = normalize(words)
        return clean["ê"]

    logits = logits_fn(normalized)
    base = clean["ê"].detach()

    def perturbed(delta):  # every pass embeds the same tokens: the clean pass's ê is reused
        return lambda words, tokens: base + delta

    sigma = cfg.sift_init_perturbation
    delta = torch.randn_like(base).mul_(sigma).clamp_(-2 * sigma, 2 * sigma).requires_grad_()
    ascent = ASCENT_LOSSES[cfg.sift_loss](logits_fn(perturbed(delta)), logits.detach()).sum()
    (grad,) = torch.autograd.grad(ascent, delta)
    if torch.isfinite(grad.norm()):  # DeBERTa keeps δ₀ when the gradient overflowed
        delta = delta + cfg.sift_step_size * grad / (1e-6 + grad.abs().amax(-1, keepdim=True))
    return logits, symmetric_kl(logits_fn(perturbed(delta.detach())), logits).mean()
