import json

from emova.audio import Audio
from emova.cli import main


def test_demo_writes_json_and_a_playable_reply(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "demo.json").read_text())
    reply = Audio.load(tmp_path / "reply.wav")
    assert reply.duration > 0.5 and not reply.is_silent()


def test_demo_wer_judges_the_demo_reply_and_names_missing_inputs(tmp_path, capsys):
    """benchmarks/demo_wer.py measures issue 5's demo line; it refuses a directory without the demo's files."""
    import importlib.util
    from pathlib import Path

    import pytest

    pytest.importorskip("pocketsphinx")
    spec = importlib.util.spec_from_file_location("demo_wer", Path(__file__).parents[1] / "benchmarks" / "demo_wer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([str(tmp_path)]) == 2
    assert "demo.json" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    r = mod.demo_wer(tmp_path)
    assert r["reply_text"] == json.loads((tmp_path / "demo.json").read_text())["text"]
    assert isinstance(r["heard"], str) and 0.0 <= r["wer"] <= 2.0
    (tmp_path / "demo.json").write_text("{}")
    assert mod.main([str(tmp_path)]) == 2
    assert "no reply text" in capsys.readouterr().err
