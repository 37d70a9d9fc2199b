"""PDR's maths in process (finetune/pdr.py): each divergence against values worked out by hand on a toy batch, its
gradients (through both posteriors, Hellinger included), and the whole term on a toy model: the noise is drawn as
documented and gets no gradient while the model does. TP=2 = TP=1 is in test_robust_distributed.py."""
import math

import pytest
import torch
import torch.nn.functional as F

from megatron_vega.finetune.config import PdrConfig
from megatron_vega.finetune.pdr import DIVERGENCES, pdr_term

# Two rows of two classes: p = (1/2, 1/2) vs q = (3/4, 1/4), and p = (1/5, 4/5) vs q = (1/2, 1/2).
CLEAN = torch.tensor([[0.0, 0.0], [0.0, math.log(4.0)]])
NOISY = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
P = [(0.5, 0.5), (0.2, 0.8)]
Q = [(0.75, 0.25), (0.5, 0.5)]


def _kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b))


def _by_hand(name, p, q):
    if name == "symmetric-kl":
        return _kl(q, p) + _kl(p, q)
    if name == "js":
        m = [(x + y) / 2 for x, y in zip(p, q)]
        return _kl(m, p) + _kl(m, q)
    return 0.5 * sum((math.sqrt(x) - math.sqrt(y)) ** 2 for x, y in zip(p, q))


@pytest.mark.parametrize("name", ["js", "hellinger", "symmetric-kl"])
def test_divergence_values_by_hand(name):
    rows = DIVERGENCES[name](CLEAN, NOISY)
    expected = [_by_hand(name, p, q) for p, q in zip(P, Q)]
    assert rows.tolist() == pytest.approx(expected, rel=1e-6)
    assert DIVERGENCES[name](CLEAN, CLEAN).abs().max() < 1e-7  # zero between equal posteriors
    if name == "hellinger":  # row 0 worked out: ½((√½ − √¾)² + (√½ − √¼)²)
        assert rows[0].item() == pytest.approx(0.5 * ((0.5 ** 0.5 - 0.75 ** 0.5) ** 2 + (0.5 ** 0.5 - 0.5) ** 2))


@pytest.mark.parametrize("name", ["js", "hellinger", "symmetric-kl"])
def test_divergence_gradients_reach_both_posteriors(name):
    clean, noisy = CLEAN.clone().requires_grad_(), NOISY.clone().requires_grad_()
    DIVERGENCES[name](clean, noisy).sum().backward()
    p, q = F.softmax(CLEAN, -1), F.softmax(NOISY, -1)
    if name == "symmetric-kl":  # d KL(sg(q) ‖ p) / d z_p = p − q, and symmetrically
        expected_clean, expected_noisy = p - q, q - p
    elif name == "js":  # d KL(sg(m) ‖ p) / d z_p = p − m
        m = (p + q) / 2
        expected_clean, expected_noisy = p - m, q - m
    else:  # squared Hellinger differentiated through both sides (MT-DNN detaches both: no gradient at all)
        a, b = CLEAN.clone().requires_grad_(), NOISY.clone().requires_grad_()
        (0.5 * (F.softmax(a, -1).sqrt() - F.softmax(b, -1).sqrt()).pow(2).sum()).backward()
        expected_clean, expected_noisy = a.grad, b.grad
    torch.testing.assert_close(clean.grad, expected_clean)
    torch.testing.assert_close(noisy.grad, expected_noisy)
    assert clean.grad.abs().max() > 1e-3 and noisy.grad.abs().max() > 1e-3


class _ToyModel(torch.nn.Module):
    """Embedding -> hook -> mean over the sequence -> linear: the shape of the encoder's embedding hook."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embedding, self.out = torch.nn.Embedding(10, 8), torch.nn.Linear(8, 3)

    def forward(self, tokens, hook=None):
        words = self.embedding(tokens).transpose(0, 1)  # [s, b, H] as the encoder's hook sees them
        if hook is not None:
            words = hook(words, tokens)
        return self.out(words.mean(0))


@pytest.mark.parametrize("name", ["js", "hellinger", "symmetric-kl"])
def test_pdr_term_on_a_toy_model(name):
    model, tokens = _ToyModel(), torch.tensor([[1, 2, 3], [4, 5, 6]])
    cfg = PdrConfig(pdr=True, pdr_divergence=name, pdr_noise=0.5)
    seen = []

    def logits_fn(hook):
        def spy(words, tokens):
            out = hook(words, tokens)
            seen.append(out - words)  # the noise the hook added
            return out
        return model(tokens, spy)

    clean = model(tokens)
    torch.manual_seed(5)
    term = pdr_term(logits_fn, clean, cfg)
    # By hand: δ = σ · rms(e) · N(0, I), N drawn from the default generator after seeding.
    words = model.embedding(tokens).transpose(0, 1).detach()
    torch.manual_seed(5)
    delta = torch.randn(words.shape) * 0.5 * words.pow(2).mean(-1, keepdim=True).sqrt()
    torch.testing.assert_close(seen[0].detach(), delta)
    noisy = model.out((words + delta).mean(0))
    assert term.item() == pytest.approx(DIVERGENCES[name](clean, noisy).mean().item(), rel=1e-5)
    assert term.item() > 1e-6
    # The gradient reaches the model through both passes and never the noise: it equals the gradient of the same
    # term with δ a constant (δ depends on e through rms(e); a δ with history would add a path).
    term.backward()
    reference = _ToyModel()
    ref_clean = reference(tokens)
    ref_noisy = reference(tokens, lambda words, tokens: words + delta)
    DIVERGENCES[name](ref_clean, ref_noisy).mean().backward()
    for (key, param), ref in zip(model.named_parameters(), reference.parameters()):
        assert param.grad.abs().sum() > 0, key
        torch.testing.assert_close(param.grad, ref.grad, msg=key)
