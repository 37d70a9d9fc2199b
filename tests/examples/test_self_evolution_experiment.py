"""examples/self_evolution_experiment.py without running it (a run takes an hour): it skips cleanly without the
corpus, refuses to mix settings in one work directory, gives the plain-MLM arm the FLOPs of stages 1 + 2, and
prints mean ± std over the seeds."""
import importlib.util
import json
from types import SimpleNamespace

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def experiment():
    spec = importlib.util.spec_from_file_location("se_experiment", REPO / "examples" / "self_evolution_experiment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_skips_cleanly_without_the_corpus(experiment, tmp_path, capsys):
    experiment.main(["--corpus-dir", str(tmp_path / "none"), "--work", str(tmp_path / "work")])
    assert capsys.readouterr().out.startswith("skipped: wikitext2.test.tokens, wikitext2.valid.tokens, "
                                              "tinyshakespeare.txt not found")
    assert not (tmp_path / "work").exists()


def test_a_work_directory_with_other_settings_is_refused(experiment, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in experiment.CORPUS_FILES:
        (corpus / name).write_text("text\n")
    work = tmp_path / "work"
    work.mkdir()
    settings = {k: v for k, v in vars(experiment.parse_args([])).items() if k not in ("corpus_dir", "work", "seeds")}
    (work / "results.json").write_text(json.dumps({"arms": {}, "settings": {**settings, "se_steps": 7}}))
    with pytest.raises(SystemExit) as exit_info:
        experiment.main(["--corpus-dir", str(corpus), "--work", str(work)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {work}: holds a run with other settings (--se-steps); " \
                                              "choose another --work"


def test_equal_compute_arm_pays_for_both_stages(experiment):
    args = experiment.parse_args([])
    run = experiment.make_run(args, ["unused"], "unused.model", 1, load="plm")
    assert (run.model.num_layers, run.model.hidden_size, run.model.num_attention_heads) == (4, 256, 4)
    assert (run.train.lr, run.train.lr_warmup_fraction, run.train.lr_decay_style) == (1e-5, 0.1, "linear")
    no_stage1 = SimpleNamespace(stats=lambda: {"blocks": 0, "positions": 0})
    mined = SimpleNamespace(stats=lambda: {"blocks": 9000, "positions": 9000 * 18})
    alone, _ = experiment.equal_compute_steps(run, 150, no_stage1)
    both, compute = experiment.equal_compute_steps(run, 150, mined)
    assert 150 * 4 / 3 * 0.95 < alone < 150 * 4 / 3  # a reference forward per step; fewer predicted positions
    assert both > alone + 90 and compute["mlm_steps"] == both  # stage 1: a forward over 9000 blocks


def test_table_shows_mean_and_spread_over_seeds(experiment):
    arm = {"se": {"steps": 150, "mined_nll": 3.0, "valid_mlm_loss": 4.0},
           "mlm": {"steps": 300, "mined_nll": 3.5, "valid_mlm_loss": 4.1}}
    results = {"seeds": [1, 2], "nll_blocks": 512, "nll_positions": 9000,
               "plm": {"steps": 600, "mined_nll": 3.6, "valid_mlm_loss": 4.2},
               "arms": {"1": arm, "2": {k: {**v, "mined_nll": v["mined_nll"] + 0.2} for k, v in arm.items()}}}
    text = experiment.table(results)
    assert "A  self-evolution, stage 1 + 2" in text and "3.1000 ± 0.1414" in text and "4.0000 ± 0.0000" in text
    assert "B  plain MLM, equal compute" in text and "3.6000 ± 0.1414" in text
    assert "seed 2: A 3.2000 / 4.0000   B 3.7000 / 4.1000" in text
