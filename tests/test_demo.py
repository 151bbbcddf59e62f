import json

from emova.audio import Audio
from emova.cli import main


def test_demo_writes_json_and_a_playable_reply(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "demo.json").read_text())
    reply = Audio.load(tmp_path / "reply.wav")
    assert reply.duration > 0.5 and not reply.is_silent()
