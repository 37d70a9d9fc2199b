"""Triton's interpreter for these tests: TRITON_INTERPRET is read when a kernel is defined, so it is set here,
before any test imports a kernel module (they are imported lazily by the code under test). Triton is a test
dependency on Linux (pyproject.toml's test extra): there a missing install is an error, not a skip."""
import os
import sys

import pytest

os.environ["TRITON_INTERPRET"] = "1"
if sys.platform != "linux":
    pytest.importorskip("triton")
import triton  # noqa: E402,F401  (fails loudly where the test extra should have installed it)
