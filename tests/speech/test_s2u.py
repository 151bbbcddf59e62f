import numpy as np
import pytest
import torch

from emova.audio import Audio, AudioError
from emova.speech.s2u import S2UConfig, S2UModel
from emova.speech.tokenizer import SpeechTokenizer

SMALL = dict(conv_channels=32, blocks=[{"layers": 1, "dim": 32, "heads": 2}], post_dim=32, post_layers=1,
             post_heads=2)


@pytest.fixture(scope="module")
def tok():
    torch.manual_seed(0)
    return SpeechTokenizer(S2UModel(S2UConfig.from_dict(SMALL)), chunk_seconds=4.0, context_seconds=1.0)


def test_one_unit_per_40ms(tok, tone):
    for seconds in (0.3, 1.0, 2.7):
        a = Audio(np.tile(tone.samples, 3)[: int(16000 * seconds)], 16000)
        units = tok.encode(a)
        assert abs(len(units) - seconds * 25) <= 1
        assert all(0 <= u < 4096 for u in units)


def test_long_audio_is_chunked_and_stitched(tok, tone):
    a = Audio(np.tile(tone.samples, 11), 16000)  # 11 s > 4 s chunks
    units = tok.encode(a)
    assert abs(len(units) - 11 * 25) <= 1
    direct = tok._encode_waves([a.samples])[0]["units"].tolist()
    # away from window edges the stitched result equals a single pass on this periodic signal
    agree = np.mean(np.array(units[30:-30]) == np.array(direct[30:-30]))
    assert agree > 0.9


def test_encode_refuses_bad_audio(tok, tmp_path):
    with pytest.raises(AudioError, match="silent"):
        tok.encode(Audio(np.zeros(16000, np.float32), 16000))
    p = tmp_path / "x.wav"
    p.write_bytes(b"RIFF....WAVEfmt junk")
    with pytest.raises(AudioError):
        tok.encode(p)
    tok_short = SpeechTokenizer(tok.model, max_seconds=2.0)
    with pytest.raises(AudioError, match="too long"):
        tok_short.encode(Audio(np.random.default_rng(0).normal(0, 0.1, 16000 * 3).astype(np.float32), 16000))


def test_other_sample_rates_give_same_length(tok, tone, tmp_path):
    for sr in (8000, 22050, 44100, 48000):
        p = tmp_path / f"a{sr}.wav"
        tone.resample(sr).save(p)
        assert abs(len(tok.encode(p)) - 25) <= 1


def test_reduce_and_strings(tok):
    assert tok.reduce([5, 5, 9, 9, 5, 1, 1]) == [5, 9, 5, 1]
    assert tok.reduce([]) == []
    s = tok.units_to_string([12, 7, 4095])
    assert s == "<|speech_12|><|speech_7|><|speech_4095|>"
    assert tok.string_to_units(s) == [12, 7, 4095]
    assert tok.string_to_units(" <|speech_1|> <|speech_2|>\n") == [1, 2]
    for bad in ("<|speech_4096|>", "<|speech_1|>hello", "hello"):
        with pytest.raises(ValueError):
            tok.string_to_units(bad)
    with pytest.raises(ValueError, match="out of range"):
        tok.units_to_string([-1])


def test_save_and_load_roundtrip(tok, tmp_path, tone):
    tok.save_pretrained(tmp_path / "st", dtype=torch.float32)
    again = SpeechTokenizer.from_pretrained(tmp_path / "st")
    assert again.encode(tone) == tok.encode(tone)
    with pytest.raises(ValueError, match="no model"):
        SpeechTokenizer.from_pretrained(tmp_path / "missing")


def test_config_validation():
    with pytest.raises(ValueError, match="unknown S2U config keys"):
        S2UConfig.from_dict({"n_mel": 80})
    with pytest.raises(ValueError):
        S2UConfig.from_dict({"blocks": [{"layers": 1, "dim": 30, "heads": 4}]})


def test_emova_size_config_runs():
    from emova.speech.s2u import CONFIGS

    m = S2UModel(CONFIGS["emova"]).eval()
    assert [b.dim for b in m.cfg.blocks] == [512, 768] and [b.layers for b in m.cfg.blocks] == [2, 10]
    with torch.no_grad():
        out = m.encode(torch.randn(1, 128, 101))
    assert out["units"].shape == (1, 26)


def test_ten_minute_file_is_encoded(tok, tmp_path):
    rng = np.random.default_rng(0)
    a = Audio((rng.normal(0, 0.1, 16000 * 600)).astype(np.float32), 16000)
    p = tmp_path / "long.wav"
    a.save(p)
    units = tok.encode(p)
    assert abs(len(units) - 600 * 25) <= 1


def test_stereo_file_is_mixed_down(tok, tone, tmp_path):
    import soundfile as sf

    p = tmp_path / "st.wav"
    sf.write(p, np.stack([tone.samples, tone.samples], 1), 16000)
    assert tok.encode(p) == tok.encode(tone)


def test_cli_reports_bad_input_without_traceback(tok, tone, tmp_path, capsys):
    from emova.cli import main

    tok.save_pretrained(tmp_path / "st")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio" * 100)
    assert main(["speech", "encode", str(junk), "--model", str(tmp_path / "st")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("emova: error: cannot read") and "Traceback" not in err
    tone.save(tmp_path / "ok.wav")
    assert main(["speech", "encode", str(tmp_path / "ok.wav"), "--model", str(tmp_path / "st"), "--reduce"]) == 0
    assert capsys.readouterr().out.startswith("<|speech_")


def test_cli_lists_every_command():
    from emova.cli import build_parser

    text = build_parser().format_help()
    for cmd in ("demo", "chat", "asr", "tts", "speech", "train", "eval", "bench", "convert"):
        assert cmd in text
