"""`emova bench serve`: against an in-process server whose model answers a fixed spoken dialogue (every
request succeeds with audio, streamed first audio comes before the end), and end to end through the CLI
with a server subprocess on the tiny random model (JSON report, the server's own memory, no 5xx, the
server is stopped afterwards); a server that cannot start is a clear error."""

from __future__ import annotations

import json
import os

import pytest

from emova.eval.bench_serve import EXAMPLE_WAV, bench_serve, format_table, main, run_bench
from emova.model.prompts import format_answer
from emova.serve.api import create_app
from tests.inference.conftest import Feed, emova, ours_dir  # noqa: F401 — fixtures
from tests.serve.live import live_uvicorn
from tests.serve.test_api import ANSWER


@pytest.fixture
def live(emova, monkeypatch):  # noqa: F811
    monkeypatch.setattr(emova, "_tokens", Feed(emova, format_answer(ANSWER)))
    with live_uvicorn(create_app(emova)) as url:
        yield url


def test_run_bench_in_process(live, tmp_path):
    r = run_bench(live, pid=os.getpid(), n=2, concurrency=3, image="world")
    for key in ("streamed", "non_streamed"):
        s = r["sequential"][key]
        assert s["ok"] == 2 and s["with_audio"] == 2 and s["errors"] == []
        assert 0 < s["first_audio_s"]["p50"] <= s["total_s"]["p50"] + 1e-6
    st = r["sequential"]["streamed"]
    assert st["first_text_s"]["p50"] <= st["first_audio_s"]["p50"]  # the reply text streams before its speech
    c = r["concurrent"]
    assert c["ok"] == 3 and c["with_audio"] == 3 and c["status_counts"] == {"200": 3}
    assert c["server_errors_5xx"] == 0 and c["throughput_rps"] > 0
    assert sum(t["stream"] for t in c["turns"]) == 2  # both paths under load
    assert r["memory"]["peak_rss_mb"] >= r["memory"]["rss_start_mb"] > 10
    assert r["checks"]["concurrent_all_ok"] and r["checks"]["no_5xx"]
    assert r["inputs"]["image"] and r["inputs"]["audio_s"] > 0.5
    bench_serve(url=live, n=1, concurrency=2, out=tmp_path / "b.json", quiet=True)
    table = format_table(json.loads((tmp_path / "b.json").read_text()) | {"out": "x"})
    assert "streamed (SSE)" in table and "peak" in table


def test_cli_with_server_subprocess(ours_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "bench_serve.json"
    main(["--model", str(ours_dir), "-n", "1", "-c", "2", "--max-tokens", "16", "--out", str(out), "--server-threads", "1"])
    r = json.loads(out.read_text())
    assert r["server"]["mode"] == "subprocess" and r["inputs"]["audio"] == str(EXAMPLE_WAV)
    assert r["server"]["threads"] == "1"
    assert r["concurrent"]["requests"] == 2 and r["concurrent"]["server_errors_5xx"] == 0
    assert r["concurrent"]["connection_errors"] == 0 and r["checks"]["no_5xx"]
    pid = r["memory"]["pid"]
    assert pid != os.getpid() and r["memory"]["peak_rss_mb"] > 100  # the server's own memory (torch loaded)
    assert not os.path.exists(f"/proc/{pid}")  # stopped and reaped
    assert "concurrent: 2 requests" in capsys.readouterr().out


def test_server_that_cannot_start_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no model at"):
        bench_serve(model=str(tmp_path / "missing"), n=1, concurrency=1, out=None, startup_timeout=60)


def test_bad_inputs_fail_before_any_server(tmp_path):
    with pytest.raises(ValueError, match="image"):
        bench_serve(url="http://127.0.0.1:9", image=str(tmp_path / "none.png"), out=None)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    with pytest.raises(ValueError):
        bench_serve(url="http://127.0.0.1:9", audio=bad, out=None)


def _fake_world(tmp_path, speech_wav: bytes, png: bytes):
    from emova.data.world_speech import wav_name

    world, speech = tmp_path / "world", tmp_path / "world_speech"
    (world / "heldout" / "images").mkdir(parents=True)
    (speech / "heldout" / "wav").mkdir(parents=True)
    (world / "heldout" / "images" / "s0.png").write_bytes(png)
    for key in ("dialogue_speech-heldout-00000/user", "vqa_speech-heldout-00000/user"):
        (speech / "heldout" / "wav" / wav_name(key)).write_bytes(speech_wav)
    def asked(key):  # the record's speech field, as the world writes it
        return [{"key": key, "text": "a question", "style": "gender-female_emotion-neutral_speed-normal_pitch-normal",
                 "role": "input"}]

    recs = {"dialogue_speech": [{"id": "d0", "speech": asked("dialogue_speech-heldout-00000/user"), "conversations": [
                {"from": "human", "value": "prompt<<speech:dialogue_speech-heldout-00000/user>>"}]}],
            "vqa_speech": [{"id": "v0", "image": "heldout/images/s0.png",
                            "speech": asked("vqa_speech-heldout-00000/user"), "conversations": [
                {"from": "human", "value": "<image>\nprompt<<speech:vqa_speech-heldout-00000/user>>"}]}]}
    for task, r in recs.items():
        (world / "heldout" / f"{task}.json").write_text(json.dumps(r))
    return world, speech


def test_world_turns_cycle_dialogue_and_image_questions(live, tmp_path):
    import io

    from PIL import Image

    from emova.eval.bench_serve import world_turns

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, format="PNG")
    world, speech = _fake_world(tmp_path, EXAMPLE_WAV.read_bytes(), buf.getvalue())
    turns = world_turns(4, world, speech)
    assert [img is not None for _, img in turns] == [False, True, False, True]
    assert all(os.path.isfile(w) for w, _ in turns)
    r = run_bench(live, pid=os.getpid(), n=2, concurrency=2, turns=turns)
    assert r["inputs"]["turns"] == 4 and len(r["inputs"]["turn_list"]) == 4
    assert r["sequential"]["streamed"]["ok"] == 2 and r["ttfa_speedup_per_turn"]["n"] == 2
    assert "held-out spoken turns" in format_table(r | {"server": {"mode": "external", "model": None}})
    with pytest.raises(ValueError, match="generate the world"):
        world_turns(2, tmp_path / "nowhere", speech)
