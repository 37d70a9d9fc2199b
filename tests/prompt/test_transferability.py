"""The transferability metric: 1 for a prompt against itself, symmetric in its two embeddings, and the tool's
matrix (table + JSON) on real CB inputs with prompts trained here."""
import json
import subprocess
import sys

import pytest
import torch

from megatron_vega.prompt.transferability import similarity, transfer_matrix
from tests.conftest import REPO
from tests.finetune.test_prompt_tuning import prompt_run


@pytest.mark.parametrize("metric", ["cosine", "overlap"])
def test_similarity_is_one_for_itself_and_symmetric(metric):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, generator=gen), torch.randn(500, generator=gen)
    assert similarity(a, a, metric) == pytest.approx(1.0)
    assert similarity(a, b, metric) == similarity(b, a, metric)
    assert similarity(a, b, metric) < 0.9
    assert similarity(a, -a, "cosine") == pytest.approx(-1.0)


def test_matrix_rows_are_sources_columns_targets_with_their_own_data():
    emb = {("X", "T"): torch.tensor([1.0, 0.0]), ("T", "T"): torch.tensor([1.0, 1.0]),
           (None, "T"): torch.tensor([1.0, 0.0])}
    raw = transfer_matrix(lambda p, t: emb[p, t], ["X", "T"], ["T"], "cosine")
    assert raw == {"X": {"T": pytest.approx(2 ** -0.5)}, "T": {"T": pytest.approx(1.0)}}
    centred = transfer_matrix(lambda p, t: emb[p, t], ["X", "T"], ["T"], "cosine", center="backbone")
    assert centred["T"]["T"] == pytest.approx(1.0) and centred["X"]["T"] == 0.0  # X changes nothing


@pytest.mark.slow
def test_tool_prints_the_matrix_and_writes_json(world_of_one, superglue, spm_path, tmp_path):
    for task in ("RTE", "CB"):
        prompt_run(task, spm_path, superglue, {"save_prompt": str(tmp_path / f"{task}.pt")})()
    out = tmp_path / "t.json"
    cmd = [sys.executable, "tools/prompt_transferability.py", "--model-preset", "tiny", "--tokenizer-model",
           spm_path, "--prompts", str(tmp_path / "RTE.pt"), f"SELF={tmp_path / 'CB.pt'}", str(tmp_path / "CB.pt"),
           "--targets", "CB", "--data-dir", str(superglue / "full"), "--max-examples", "16", "--seq-length", "64",
           "--json", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "source \\ target" in done.stdout
    matrix = json.loads(out.read_text())["matrix"]
    assert matrix["CB"]["CB"] == pytest.approx(1.0) and matrix["SELF"]["CB"] == pytest.approx(1.0)
    assert -1.0 <= matrix["RTE"]["CB"] <= 1.0
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and again.stderr.strip().endswith("exists; pass --overwrite to replace it")
