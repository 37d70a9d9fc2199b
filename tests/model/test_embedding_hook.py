"""The embedding hook: injected vectors replace the word vectors before LayerNorm, mask and dropout, only inside
the ``with`` block, and may lengthen the sequence (soft prompts)."""
import torch

from megatron_vega.config import ParallelConfig
from megatron_vega.model.attention_inputs import AttentionInputs
from megatron_vega.model.build import build_model, transformer_config
from megatron_vega.model.weights import init_weights
from tests.model.helpers import padded_batch, tiny_config


def _model():
    cfg = tiny_config()
    [model] = build_model(cfg, transformer_config(cfg, ParallelConfig()), heads=())
    init_weights([model], 5)
    return cfg, model.eval()


@torch.no_grad()
def test_hook_sees_word_vectors_and_applies_only_inside_the_block(single_process):
    cfg, model = _model()
    ids, mask = padded_batch(cfg.vocab_size, seq=24)
    plain = model(ids, AttentionInputs(mask))
    seen = {}

    def record(words, tokens):
        seen["words"], seen["tokens"] = words, tokens
        return words

    with model.embedding_hook(record):
        assert torch.equal(model(ids, AttentionInputs(mask)), plain)  # the identity hook changes nothing, bit for bit
    assert torch.equal(seen["tokens"], ids)
    torch.testing.assert_close(seen["words"], model.word_embeddings(ids).transpose(0, 1))
    noise = torch.randn(ids.shape[1], ids.shape[0], cfg.hidden_size)
    with model.embedding_hook(lambda words, tokens: words + noise):
        shifted = model(ids, AttentionInputs(mask))
    assert (shifted - plain).abs().max() > 1e-3
    assert torch.equal(model(ids, AttentionInputs(mask)), plain)  # restored after the block


@torch.no_grad()
def test_hook_may_insert_vectors(single_process):
    cfg, model = _model()
    ids, mask = padded_batch(cfg.vocab_size, seq=24)
    prompt = torch.randn(3, 1, cfg.hidden_size).expand(3, ids.shape[0], -1)
    longer = torch.cat([mask[:, :1], mask.new_ones(ids.shape[0], 3), mask[:, 1:]], dim=1)
    with model.embedding_hook(lambda words, tokens: torch.cat([words[:1], prompt, words[1:]])):
        hidden = model(ids, AttentionInputs(longer))
    assert hidden.shape == (ids.shape[1] + 3, ids.shape[0], cfg.hidden_size)
