"""Entry points launched the way users launch them: each call a fresh interpreter, torchrun for more than one rank;
and the training log read back from what they print."""
import re
import subprocess
import sys

from tests.conftest import REPO

_LOG_LINE = re.compile(r"^iteration\s+(\d+)/\s*\d+ \|.*\| lr (\S+) \| loss (\S+) \| grad norm (\S+) "
                       r"\| loss scale (\S+)",
                       re.MULTILINE)


def launch(script: str, *flags, nproc: int = 1, cwd=None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python script flags`` (one rank) or ``torchrun --standalone --nproc_per_node N script flags``."""
    runner = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return subprocess.run([sys.executable, *runner, str(REPO / script), *map(str, flags)], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout)


def launch_ok(script: str, *flags, **kwargs) -> subprocess.CompletedProcess:
    result = launch(script, *flags, **kwargs)
    assert result.returncode == 0, f"{script} {' '.join(map(str, flags))} failed:\n{result.stdout[-3000:]}\n" \
                                   f"{result.stderr[-5000:]}"
    return result


def training_log(stdout: str) -> dict[int, dict[str, float]]:
    """iteration -> {lr, loss, grad_norm, loss_scale} from the training log lines."""
    return {int(m[1]): {"lr": float(m[2]), "loss": float(m[3]), "grad_norm": float(m[4]), "loss_scale": float(m[5])}
            for m in _LOG_LINE.finditer(stdout)}


def one_line_error(result: subprocess.CompletedProcess, where: str) -> str:
    """The single stderr line of a refused single-rank launch (exit 2), checked to name ``where``."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {where}"), result.stderr
    return lines[0]
