"""COCO-LM's embedding sharing (docs/coco_lm.md, "Embedding sharing"), in one process on a tiny model:
- ``gdes`` routes the gradients as DeBERTa-v3's sharing states, against a fully separate reference (``none`` with
  the main table set to the generator's): E_Δ gets exactly the main model's gradient of its table, E exactly the
  generator's; ``plain`` gets their sum in its one table; the losses agree;
- the checkpoint view reads a gdes checkpoint's main table as E + E_Δ and a plain one's generator table as the
  main table."""
import pytest
import torch

from megatron_vega.config import LoggingConfig, TrainConfig, model_preset
from megatron_vega.data.config import DataConfig
from megatron_vega.data.tokenizer import vocabulary
from megatron_vega.objectives.coco_lm import CocoLM, CocoLMConfig
from megatron_vega.objectives.pretrain import build_trainer
from megatron_vega.training.arguments import RunConfig
from megatron_vega.training.checkpoint_view import GDES_DELTA, GENERATOR_TABLE, MAIN_TABLE, stored_sources

TOL = dict(atol=1e-6, rtol=1e-5)


def one_pass(sharing: str, main_table: torch.Tensor | None = None):
    """(loss dicts, {global name: gradient}, {global name: weight}) of one training pass of a fresh model."""
    from megatron_vega.model.weights import gather_full_state_dict
    run = RunConfig(model=model_preset("tiny", num_layers=2, hidden_dropout=0.0, attention_dropout=0.0),
                    train=TrainConfig(micro_batch_size=2, global_batch_size=4, train_iters=1, seed=5,
                                      exit_on_signal=False),
                    logging=LoggingConfig(peak_tflops=1.0),
                    data=DataConfig(mock_data=True, seq_length=32, mask_prob=0.3),
                    objective=CocoLMConfig(objective="coco-lm", embedding_sharing=sharing, generator_num_layers=1))
    objective = CocoLM(run)
    train_ds, _ = objective.datasets(vocabulary(run))
    trainer = build_trainer(run, objective)
    if main_table is not None:
        with torch.no_grad():
            trainer.chunks[0].word_embeddings.weight.copy_(main_table)
    weights = gather_full_state_dict(trainer.all_chunks)
    for chunks in trainer.models.values():
        for m in chunks:
            m.zero_grad_buffer()
    outputs = objective.training_pass(trainer, train_ds)
    return outputs, gather_full_state_dict(trainer.all_chunks, grads=True), weights


def test_gdes_routes_gradients_like_separate_tables(single_process):
    gdes_out, gdes, gdes_w = one_pass("gdes")
    table = gdes_w[GENERATOR_TABLE]
    assert not gdes_w[GDES_DELTA].any()  # E_Δ starts at zero: the main model starts on the generator's table
    assert MAIN_TABLE not in gdes  # the main model owns E_Δ only
    ref_out, ref, _ = one_pass("none", main_table=table)
    plain_out, plain, _ = one_pass("plain", main_table=table)
    for got in (gdes_out, plain_out):
        for a, b in zip(got, ref_out, strict=True):
            for key in ("generator loss", "main loss", "copy loss", "clm loss"):
                assert torch.allclose(a[key], b[key], **TOL), key
    assert ref[MAIN_TABLE].abs().max() > 0 and ref[GENERATOR_TABLE].abs().max() > 0
    assert torch.allclose(gdes[GDES_DELTA], ref[MAIN_TABLE], **TOL)  # main losses only
    assert torch.allclose(gdes[GENERATOR_TABLE], ref[GENERATOR_TABLE], **TOL)  # generator MLM only
    assert torch.allclose(plain[MAIN_TABLE], ref[MAIN_TABLE] + ref[GENERATOR_TABLE], **TOL)
    for name, grad in ref.items():  # every other parameter: the same gradient
        if name not in (MAIN_TABLE, GENERATOR_TABLE):
            assert torch.allclose(gdes[name], grad, **TOL), name


@pytest.mark.parametrize("stored, key, sources", [
    ({GENERATOR_TABLE, GDES_DELTA, "layers.0.x"}, MAIN_TABLE, (GENERATOR_TABLE, GDES_DELTA)),
    ({MAIN_TABLE}, GENERATOR_TABLE, (MAIN_TABLE,)),
    ({MAIN_TABLE, GENERATOR_TABLE}, GENERATOR_TABLE, (GENERATOR_TABLE,)),
    ({GENERATOR_TABLE}, MAIN_TABLE, None),
])
def test_stored_sources(stored, key, sources):
    assert stored_sources(key, stored) == sources


@pytest.mark.parametrize("sharing", ["plain", "gdes"])
def test_dry_run_counts_the_generator(sharing, capsys):
    """--dry-run's parameter and memory lines: the main model plus the generator (its word table only when it owns
    one: not under plain sharing)."""
    from dataclasses import replace

    from megatron_vega.model.parameter_count import count_parameters
    from megatron_vega.training.dry_run import dry_run
    run = RunConfig(model=model_preset("base"), objective=CocoLMConfig(objective="coco-lm", embedding_sharing=sharing))
    objective = CocoLM(run)
    plan = dry_run(run, 8, objective.flops_per_token(), objective.further_models())
    mlm = dry_run(replace(run, objective=CocoLMConfig()), 8)
    generator = count_parameters(objective.generator_config())
    table = run.model.vocab_size * run.model.hidden_size
    assert plan["parameters"] == mlm["parameters"] + generator - (table if sharing == "plain" else 0)
    assert "of which generator" in capsys.readouterr().out
    for key in ("weights", "gradients", "optimizer"):
        assert plan["memory_gib"][key] > mlm["memory_gib"][key]
    assert plan["memory_gib"]["activations"] == mlm["memory_gib"]["activations"]  # one model's at a time
