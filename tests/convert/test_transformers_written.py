"""from-hf on checkpoints transformers itself writes with its defaults: a ``DebertaV2ForMaskedLM`` (``legacy: true``,
MLM head named ``cls.predictions.*``), a bare ``DebertaV2Model`` and a ``DebertaV2ForSequenceClassification``
(no MLM head: a fresh seeded one, said in one line). Each is imported, exported back with to-hf and reloaded."""
import pytest
import torch

from megatron_vega.config import ModelConfig
from megatron_vega.convert.hf_mapping import fresh_mlm_head, model_config_from_hf
from tests.convert.test_convert_checkpoint import convert


def _tiny_config():
    from transformers import DebertaV2Config
    return DebertaV2Config(  # DeBERTa-v3's choices, at a tiny size; everything else transformers' defaults
        vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        relative_attention=True, position_biased_input=False, pos_att_type=["p2c", "c2p"], max_relative_positions=-1,
        position_buckets=16, norm_rel_ebd="layer_norm", type_vocab_size=0, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)


def _perturbed(model):
    with torch.no_grad():  # transformers initialises biases and LayerNorms to constants: perturb everything
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    from transformers import DebertaV2ForMaskedLM, DebertaV2ForSequenceClassification, DebertaV2Model
    root = tmp_path_factory.mktemp("transformers-written")
    torch.manual_seed(0)
    config = _tiny_config()
    assert config.legacy  # transformers' default
    for name, cls in (("mlm", DebertaV2ForMaskedLM), ("base", DebertaV2Model),
                      ("classifier", DebertaV2ForSequenceClassification)):
        _perturbed(cls(config)).save_pretrained(root / name)
    return root


def _import_and_export(written, name, *flags):
    ckpt, back = written / f"{name}-ckpt", written / f"{name}-back"
    imported = convert("from-hf", "--hf-dir", str(written / name), "--save", str(ckpt), *flags)
    assert imported.returncode == 0, imported.stderr[-2000:]
    exported = convert("to-hf", "--load", str(ckpt), "--out", str(back), "--verify")
    assert exported.returncode == 0, exported.stderr[-2000:]
    return imported.stdout, exported.stdout, back


def _reload(cls, path):
    model, info = cls.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


@pytest.mark.slow
def test_legacy_masked_lm_imports_exports_and_reloads_with_the_same_logits(written):
    from safetensors.torch import load_file
    from transformers import DebertaV2ForMaskedLM
    assert any(k.startswith("cls.predictions.") for k in load_file(written / "mlm" / "model.safetensors"))
    imported, exported, back = _import_and_export(written, "mlm", "--tensor-model-parallel-size", "2")
    assert "fresh" not in imported
    ours_vs_back = float(exported.strip().splitlines()[-1].split("=")[-1])
    original, reloaded = DebertaV2ForMaskedLM.from_pretrained(written / "mlm").eval(), _reload(DebertaV2ForMaskedLM,
                                                                                                back)
    assert not reloaded.config.legacy  # exported with DeBERTa's own head names
    ids = torch.randint(5, 101, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        back_vs_original = (original(input_ids=ids).logits - reloaded(input_ids=ids).logits).abs().max().item()
    print(f"ours vs export {ours_vs_back:.2e}, export vs transformers' legacy original {back_vs_original:.2e}")
    assert ours_vs_back <= 1e-5 and back_vs_original <= 1e-5


@pytest.mark.slow
def test_encoders_without_mlm_head_get_a_seeded_fresh_one_and_a_line_saying_so(written):
    from safetensors.torch import load_file
    from transformers import DebertaV2ForMaskedLM, DebertaV2Model
    cfg = ModelConfig(**model_config_from_hf(_tiny_config().to_dict()))
    expected_dense = fresh_mlm_head(cfg, 7)["lm_head.dense.weight"]
    for name, extra_line in (("base", None), ("classifier", "left out the task head")):
        imported, _, back = _import_and_export(written, name, "--seed", "7")
        lines = imported.strip().splitlines()
        assert sum("has no MLM head: initialised a fresh one (seed 7)" in line for line in lines) == 1, imported
        assert extra_line is None or sum(extra_line in line for line in lines) == 1, imported
        reloaded = _reload(DebertaV2ForMaskedLM, back)
        assert torch.equal(reloaded.lm_predictions.lm_head.dense.weight, expected_dense)  # deterministic
        original = load_file(written / name / "model.safetensors")
        encoder = DebertaV2Model.from_pretrained(back).state_dict()  # (the MLM head is the unexpected part)
        for key, tensor in original.items():
            if not key.startswith(("pooler.", "classifier.")):
                assert torch.equal(encoder[key.removeprefix("deberta.")], tensor), key
