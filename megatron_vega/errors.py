"""User-facing errors: one line naming the file (or flag) and the problem, then a non-zero exit."""
import os
import sys
import tempfile
from contextlib import contextmanager


class VegaInputError(Exception):
    """Bad input from the user: a file, a flag, or a combination of them.

    Entry points catch it and print ``error: <message>`` on one line, exit code 2 (under torchrun: one line per
    launch, printed by the first rank of the node that raises it; every rank that raises it exits 2).
    """

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


@contextmanager
def exit_on_input_error():
    """Turn a VegaInputError raised inside an entry point into one stderr line and exit code 2."""
    try:
        yield
    except VegaInputError as err:
        if _first_to_report():
            print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


def _first_to_report() -> bool:
    """Whether this process is the first of its launch to report an input error. Ranks usually all reject the
    same input at once, and n copies of one line hide it: under torchrun the ranks of a node race to create one
    marker file named after the launch (its run id, the launching agent's process and restart count), and only
    the winner prints. A rank that fails alone still prints, whichever it is. Outside torchrun: always."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or int(os.environ.get("LOCAL_WORLD_SIZE", "1")) == 1:
        return True
    launch = "-".join(os.environ.get(k, "") for k in ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT"))
    marker = os.path.join(tempfile.gettempdir(), f"vega-input-error-{launch}-{os.getppid()}")
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    except OSError:  # no writable temp directory: better n lines than none
        return True
    return True
