"""What comes before and after COCO-LM pretraining, through the entry points' main functions in one process on real
text (the embedded corpus and its tiny tokenizer), with gradient-disentangled embedding sharing:
- a tiny transformers DebertaV2ForMaskedLM -> ``from-hf`` -> ``pretrain_vega.py --objective coco-lm --load`` of
  it: the encoder and MLM head come from it (within Adam's step bound after 2 steps), the generator, copy head and
  E_Δ start fresh and the log says so;
- ``to-hf`` of the result: the main encoder's exported word embeddings are E + E_Δ (MLM logits within 1e-4), and
  ``to-hf --generator`` writes a DebertaV2ForMaskedLM that loads with no missing or unexpected keys and whose MLM
  logits match ours within 1e-4;
- self-evolution stage 1 (tools/self_questioning.py) and stage 2 (``--objective self-evolution --finetune``) run
  from it, the generator ignored; without ``--finetune`` stage 2 is refused in one line;
- the fine-tuning loader reads the encoder with the table E + E_Δ."""
import contextlib
import importlib.util
import io
import json
import math
import re
from pathlib import Path

import pytest
import torch

from tests.data.conftest import write_corpus
from tests.distributed import spawn

REPO = Path(__file__).resolve().parents[2]
LR = 1e-4


def entry_main(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def captured(main, *argv) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main([str(a) for a in argv])
    return out.getvalue()


def _chain(rank, world, hf_dir, corpus, spm, root):
    from megatron.core.dist_checkpointing import load_plain_tensors
    from transformers import DebertaV2ForMaskedLM

    pretrain, convert = entry_main("pretrain_vega.py"), entry_main("tools/convert_checkpoint.py")
    data = ("--data-path", corpus, "--tokenizer-model", spm, "--seq-length", 32, "--split", "90,10,0",
            "--micro-batch-size", 2, "--global-batch-size", 4, "--log-interval", 1, "--hidden-dropout", 0,
            "--attention-dropout", 0)
    captured(convert, "from-hf", "--hf-dir", hf_dir, "--save", f"{root}/imported")
    log = captured(pretrain, "--objective", "coco-lm", "--load", f"{root}/imported", "--embedding-sharing", "gdes",
                   "--clm-head", "mlm", "--generator-num-layers", 1, "--lr", LR, "--train-iters", 2,
                   "--save", f"{root}/coco", *data)
    assert "start fresh: copy_head.*, generator.*, word_embeddings.*" in log, log
    imported, coco = ({k: v for k, v in load_plain_tensors(f"{root}/{name}").items() if isinstance(v, torch.Tensor)}
                      for name in ("imported/iter_0000000", "coco/iter_0000002"))
    assert "layers.1.linear_fc2.weight" in imported
    for key, tensor in imported.items():  # two Adam steps move a weight by at most ~2 lr: all came from HF
        if key == "word_embeddings.weight":
            continue  # the gdes checkpoint has no main table (E and E_delta below)
        assert (coco[key] - tensor).abs().max() < 3 * LR, key
    table, delta = coco["generator.word_embeddings.weight"], coco["word_embeddings.delta.weight"]
    assert (table - imported["word_embeddings.weight"]).abs().max() < 3 * LR  # E started as the HF table
    assert 0 < delta.abs().max() < 3 * LR  # E_Δ started at zero and was trained
    assert "word_embeddings.weight" not in coco and "generator.layers.0.linear_fc1.weight" in coco

    # to-hf: the main encoder (its table E + E_Δ) and, on request, the generator
    lines = captured(convert, "to-hf", "--load", f"{root}/coco", "--out", f"{root}/hf-main", "--verify")
    assert "DebertaV2ForMaskedLM" in lines and float(lines.split("=")[-1]) < 1e-4, lines
    main = DebertaV2ForMaskedLM.from_pretrained(f"{root}/hf-main")
    vocab = main.config.vocab_size
    assert torch.allclose(main.deberta.embeddings.word_embeddings.weight, (table + delta)[:vocab], atol=1e-7)
    lines = captured(convert, "to-hf", "--load", f"{root}/coco", "--out", f"{root}/hf-generator", "--generator",
                     "--verify")
    assert "the COCO-LM generator: 1 layers" in lines and float(lines.split("=")[-1]) < 1e-4, lines
    generator, info = DebertaV2ForMaskedLM.from_pretrained(f"{root}/hf-generator", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert generator.config.num_hidden_layers == 1
    assert torch.allclose(generator.deberta.embeddings.word_embeddings.weight, table[:vocab])

    # self-evolution stage 1 and 2 from the COCO-LM checkpoint (the generator is not read)
    mine = entry_main("tools/self_questioning.py")
    captured(mine, "--load", f"{root}/coco", "--output", f"{root}/neglected.nidx", "--threshold", 1.0, *data)
    stage2 = ("--objective", "self-evolution", "--load", f"{root}/coco", "--neglected-tokens",
              f"{root}/neglected.nidx", "--train-iters", 2, "--lr", LR, *data)
    with pytest.raises(SystemExit) as refused:  # its optimizer state covers another model: weights only
        pretrain([str(a) for a in stage2])
    assert refused.value.code == 2
    log = captured(pretrain, *stage2, "--finetune", "--save", f"{root}/se")
    losses = [float(x) for x in re.findall(r"\| loss (-?[\d.]+) \|", log)]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses), log
    assert (Path(root) / "se" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"

    # the fine-tuning loader: the encoder with the table E + E_Δ
    from megatron_vega.config import ParallelConfig
    from megatron_vega.convert.checkpoints import model_config_of
    from megatron_vega.finetune import checkpoint
    from megatron_vega.finetune.task_model import build_task_model
    from megatron_vega.model.build import transformer_config
    cfg = model_config_of(f"{root}/coco")
    model = build_task_model("RTE", cfg, transformer_config(cfg, ParallelConfig()), 0.1, 1)
    checkpoint.load(f"{root}/coco", model, with_head=False)
    assert torch.allclose(model.encoder.word_embeddings.weight, table + delta, atol=1e-7)
    assert torch.equal(model.encoder.layers[1].linear_fc2.weight.detach(), coco["layers.1.linear_fc2.weight"])


@pytest.mark.slow
def test_coco_lm_from_hf_to_hf_generator_self_evolution_and_finetuning(embedded_jsonl, spm_model, tmp_path):
    from transformers import DebertaV2Config, DebertaV2ForMaskedLM

    from megatron_vega.data.tokenizer import VegaTokenizer
    tokenizer = VegaTokenizer(spm_model)
    texts = [json.loads(line)["text"] for line in embedded_jsonl.read_text().splitlines()[:30]]
    corpus = write_corpus(tmp_path / "docs", [tokenizer.encode(t)[:100] for t in texts])
    torch.manual_seed(0)
    hf = DebertaV2ForMaskedLM(DebertaV2Config(  # DeBERTa-v3's choices at a tiny size
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, relative_attention=True, position_biased_input=False, pos_att_type=["p2c", "c2p"],
        max_relative_positions=-1, position_buckets=16, norm_rel_ebd="layer_norm", type_vocab_size=0,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    with torch.no_grad():  # transformers initialises biases and LayerNorms to constants: perturb everything
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(tmp_path / "hf")
    spawn(_chain, 1, str(tmp_path / "hf"), corpus, spm_model, str(tmp_path))
