"""The CB prompt-transfer chain (examples/superglue/prompt_transfer_cb.sh) end to end on the random tiny model,
shortened: sources, CB alone, vanilla transfers, the transferability matrix, PANDA students and the summary."""
import json
import os
import subprocess

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_cb_chain_runs_end_to_end(shared_data, tmp_path):
    env = dict(os.environ, MODEL_PRESET="tiny", TOKENIZER=str(shared_data / "corpus" / "botchan_sp1k.model"),
               SUPERGLUE=str(shared_data / "superglue" / "full"), RUN_DIR=str(tmp_path / "run"), EPOCHS="1",
               NPROC_PER_NODE="1", OMP_NUM_THREADS="2",
               EXTRA_ARGS="--max-train-examples 32 --max-eval-examples 16 --seq-length 64 --prompt-length 4")
    out = subprocess.run(["bash", "examples/superglue/prompt_transfer_cb.sh"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    run = tmp_path / "run"
    matrix = json.loads((run / "transferability.json").read_text())["matrix"]
    assert set(matrix) == {"RTE", "WSC", "CB"} and matrix["CB"]["CB"] == pytest.approx(1.0)
    summary = (run / "summary.txt").read_text().splitlines()
    assert len(summary) == 5  # CB alone, two transfers, two PANDA students
    assert sum("PANDA from RTE teacher" in line for line in summary) == 1
    assert sum("vanilla transfer from WSC" in line for line in summary) == 1
    assert all(" dev f1 " in line for line in summary)
    assert (run / "predictions" / "panda_RTE" / "CB.jsonl").is_file()
