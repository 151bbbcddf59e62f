"""`--threads` of `emova serve` / `emova web` and `--server-threads` of `emova bench serve`."""

import subprocess
import sys

import pytest

from emova.cli import build_parser
from emova.eval.bench_serve import main as bench_main
from emova.serve.api import server_threads, usable_cores


def test_auto_leaves_one_core_to_the_http_side(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert server_threads("auto") == server_threads(None) == max(1, usable_cores() - 1)
    assert server_threads(3) == server_threads("3") == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # an explicit environment setting wins over the guess
    assert server_threads("auto") == 3 and server_threads(2) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    assert server_threads("auto") == max(1, usable_cores() - 1)


@pytest.mark.parametrize("bad", [0, "0", -1, "two", "1.5", "", "02"])
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(ValueError, match="positive integer or 'auto'"):
        server_threads(bad)


@pytest.mark.parametrize("cmd", ["serve", "web"])
def test_cli_threads_flag(cmd, capsys):
    assert build_parser().parse_args([cmd]).threads == "auto"
    assert build_parser().parse_args([cmd, "--threads", "2"]).threads == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args([cmd, "--threads", "0"])
    assert "positive integer" in capsys.readouterr().err


def test_bench_refuses_bad_server_threads_before_starting_anything(capsys):
    with pytest.raises(SystemExit):
        bench_main(["--server-threads", "none", "--out", ""])
    assert "--server-threads" in capsys.readouterr().err


def test_serve_refuses_bad_threads_without_loading_a_model():
    p = subprocess.run([sys.executable, "-m", "emova.cli", "serve", "--threads", "-2"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "positive integer" in p.stderr
