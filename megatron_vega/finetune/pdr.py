"""PDR, posterior differential regularization (docs/pdr_and_multitask.md; Cheng et al., NAACL 2021, as MT-DNN
implements it, with its random-noise path made explicit).

L = L_task(f(x), y) + α · mean over logit rows of D(p, q), p = softmax(f(x)) on the clean word embeddings e,
q = softmax(f(x̃)) on e + δ with δ = σ · rms(e) · N(0, I) (rms per token, detached: σ is relative to the embedding
scale, so one default fits any model). D is one of (sg = stop-gradient):

* ``symmetric-kl``: KL(sg(q) ‖ p) + KL(sg(p) ‖ q) (MT-DNN's default);
* ``js``: with m = ½(sg(p) + sg(q)), KL(m ‖ p) + KL(m ‖ q) (MT-DNN's form: not the textbook ½-weighted JS, and
  each side gets a gradient through its own log-softmax);
* ``hellinger``: squared Hellinger ½ Σ (√p − √q)², differentiable through both sides (MT-DNN detaches both,
  so its term has no gradient).

δ is a constant: the gradient reaches the model through both passes and never the noise. With SiFT on, both
passes see SiFT's normalized vectors ê = LN₀(e) and δ is added to ê (rms(ê) = 1).

Tensor parallelism: the hook sees the replicated [s, b, H] word vectors (before the sequence-parallel scatter), δ
comes from the default RNG, which megatron keeps identical on TP ranks, so every TP rank adds the same δ; with
sequence parallelism each rank then keeps its own sequence shard of that δ.
"""
import torch
import torch.nn.functional as F


def _log_probs(logits):
    return F.log_softmax(logits.reshape(-1, logits.shape[-1]).float(), -1)


def _kl(log_target, log_model):
    """KL(target ‖ model) per row, the target's log-probabilities already detached."""
    return (log_target.exp() * (log_target - log_model)).sum(-1)


def symmetric_kl(clean, noisy):
    logp, logq = _log_probs(clean), _log_probs(noisy)
    return _kl(logq.detach(), logp) + _kl(logp.detach(), logq)


def js(clean, noisy):
    logp, logq = _log_probs(clean), _log_probs(noisy)
    logm = torch.logaddexp(logp.detach(), logq.detach()) - torch.log(torch.tensor(2.0))
    return _kl(logm, logp) + _kl(logm, logq)


def hellinger(clean, noisy):
    p, q = _log_probs(clean).mul(0.5).exp(), _log_probs(noisy).mul(0.5).exp()  # √p, √q without sqrt(0) gradients
    return 0.5 * (p - q).pow(2).sum(-1)


DIVERGENCES = {"js": js, "hellinger": hellinger, "symmetric-kl": symmetric_kl}


def noise_like(vectors, sigma: float):
    """δ = σ · rms(v) · N(0, I) from the default generator (identical on TP ranks), never requiring a gradient."""
    with torch.no_grad():
        scale = vectors.float().pow(2).mean(-1, keepdim=True).sqrt()
        return torch.randn(vectors.shape, dtype=torch.float32, device=vectors.device).mul_(scale * sigma)


def pdr_term(logits_fn, clean_logits, cfg, base_hook=None):
    """α-free PDR term: mean over rows of D(clean, noisy). ``logits_fn(hook)`` runs the model with ``hook`` as
    the encoder's embedding hook; ``base_hook`` (SiFT's normalization, or None) maps the word vectors before the
    noise is added, as it did in the clean pass; ``cfg`` a PdrConfig."""
    def noisy_hook(words, tokens):
        vectors = base_hook(words, tokens) if base_hook is not None else words
        return (vectors.float() + noise_like(vectors, cfg.pdr_noise)).to(vectors.dtype)

    return DIVERGENCES[cfg.pdr_divergence](clean_logits, logits_fn(noisy_hook)).mean()
