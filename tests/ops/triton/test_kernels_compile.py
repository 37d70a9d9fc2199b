"""Every Triton kernel compiles to an sm_90 cubin with the real compiler (compile_kernels.py), in a process without
the interpreter: the interpreter tests alone would pass kernels that cannot run on a GPU."""
import os
import subprocess
import sys

import tests.ops.triton.interpreter  # noqa: F401  (triton must be installed: the test extra)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_every_kernel_compiles_for_an_h100():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "tests.ops.triton.compile_kernels"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("compiled") == 9
