"""--attention-backend as users meet it: listed by --help, a wrong choice refused in one line."""
from tests.launch import launch, launch_ok, one_line_error


def test_help_lists_the_flag_and_a_wrong_core_is_one_line():
    assert "--attention-backend" in launch_ok("pretrain_vega.py", "--help").stdout
    line = one_line_error(launch("pretrain_vega.py", "--model-preset", "tiny", "--mock-data", "--dry-run",
                                 "--attention-backend", "nope"), "--attention-backend")
    assert "auto, sdpa, cpu" in line
