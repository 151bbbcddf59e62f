"""Counts on the command lines are checked by argparse: a bad one is a usage error naming the flag."""

import pytest

from emova.cli import main


@pytest.mark.parametrize("argv, flag", [
    (["eval", "omni", "--max-items", "0"], "--max-items"),
    (["eval", "s2u", "--max-items", "-3"], "--max-items"),
    (["bench", "s2u", "--threads", "0"], "--threads"),
    (["bench", "s2u", "--seconds", "nan"], "--seconds"),
    (["bench", "u2s", "--threads", "0"], "--threads"),
    (["eval", "u2s", "--threads", "two"], "--threads"),
])  # fmt: skip
def test_bad_counts_are_usage_errors(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "expected a positive" in err and "Traceback" not in err


def test_the_cli_parser_and_help_do_not_import_torch():
    """`import emova` and `emova --help` stay cheap: torch (and scipy) load with the first command that needs them
    (`emova.Audio` is resolved lazily), so help and argument errors answer in a fraction of a second."""
    import subprocess
    import sys

    code = ("import sys, emova, emova.cli; emova.cli.build_parser().format_help(); "
            "assert 'torch' not in sys.modules and 'scipy.signal' not in sys.modules, 'heavy import'; "
            "from emova import Audio, AudioError; assert Audio.__module__ == 'emova.audio' and 'torch' in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-500:]
