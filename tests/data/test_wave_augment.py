"""Waveform augmentation of real recordings (FSDD): reproducible, bounded, the right transformation applied."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emova.audio import SAMPLE_RATE, Audio, median_f0
from emova.data.speech.wave_augment import WaveAugment, augment_wave, change_speed, change_tempo
from emova.data.world_speech import fsdd_asr_records


def _vowel(seconds: float = 0.6, f0: float = 120.0) -> Audio:
    """A voiced, vowel-like tone: harmonics of f0 under a fixed envelope, onset and offset ramps."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    w = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 12))
    ramp = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.05)
    return Audio((0.5 * w / np.abs(w).max() * ramp).astype(np.float32), SAMPLE_RATE)


def test_draws_are_reproducible_and_within_the_ranges():
    aug = WaveAugment()
    assert aug.draw("clip/0", seed=3) == aug.draw("clip/0", seed=3)
    draws = [aug.draw(f"clip/{k}") for k in range(400)]
    assert len({d["speed"] for d in draws}) == 400  # different copies differ
    assert all(aug.speed[0] <= d["speed"] <= aug.speed[1] for d in draws)
    assert all(aug.pitch[0] <= d["pitch"] <= aug.pitch[1] for d in draws if "pitch" in d)
    assert all(aug.noise_snr_db[0] <= d["snr_db"] <= aug.noise_snr_db[1] for d in draws if "snr_db" in d)
    share = sum("tempo" in d for d in draws) / len(draws)
    assert 0.4 < share < 0.6  # p_tempo = 0.5
    none = WaveAugment(p_pitch=0.0, p_tempo=0.0, p_noise=0.0)
    assert all(set(none.draw(f"c/{k}")) == {"speed", "seed"} for k in range(50))


@pytest.mark.parametrize("bad", [{"speed": [1.2, 0.9]}, {"speed": [0.1, 1.0]}, {"pitch": 1.1}, {"p_noise": 1.5},
                                 {"gain": [0, 1]}])
def test_bad_settings_are_named(bad):
    with pytest.raises(ValueError, match="wave augment"):
        WaveAugment.from_dict(bad)


def test_speed_tempo_and_pitch_do_what_they_say():
    a = _vowel()
    n = len(a.samples)
    assert len(change_speed(a.samples, 1.25)) == pytest.approx(n / 1.25, abs=2)
    assert len(change_speed(a.samples, 0.8)) == pytest.approx(n / 0.8, abs=2)
    assert len(change_tempo(a.samples, SAMPLE_RATE, 1.2)) == pytest.approx(n * 1.2, rel=0.03)
    f0 = median_f0(a)
    faster = augment_wave(a, {"speed": 1.2})
    assert median_f0(faster) == pytest.approx(f0 * 1.2, rel=0.04)  # resampling raises the pitch too
    higher = augment_wave(a, {"speed": 1.0, "pitch": 1.15})
    assert len(higher.samples) == n and median_f0(higher) == pytest.approx(f0 * 1.15, rel=0.04)
    slower = augment_wave(a, {"speed": 1.0, "tempo": 1.2})
    assert median_f0(slower) == pytest.approx(f0, rel=0.04)
    for out in (faster, higher, slower):
        assert out.sample_rate == SAMPLE_RATE and float(np.abs(out.samples).max()) == pytest.approx(0.9, abs=1e-4)


def test_noise_is_added_at_the_asked_level():
    a = _vowel()
    noisy = augment_wave(a, {"speed": 1.0, "snr_db": 10.0, "seed": 1}).samples.astype(np.float64)
    clean = augment_wave(a, {"speed": 1.0}).samples.astype(np.float64)
    alpha = float(noisy @ clean / (clean @ clean))  # both are peak-normalised: project out the scale
    resid = noisy - alpha * clean
    snr = 10 * np.log10(np.sum((alpha * clean) ** 2) / np.sum(resid**2))
    assert 9.0 < snr < 11.0
    with pytest.raises(ValueError, match="empty"):
        augment_wave(Audio(np.zeros(0, np.float32), SAMPLE_RATE), {"speed": 1.0})


class _FakeTokenizer:
    """Units = the clip's length in 40 ms steps and a hash of its samples: differs whenever the audio does."""

    def encode_batch(self, audios):
        out = []
        for a in audios:
            a = a if isinstance(a, Audio) else Audio.load(a, SAMPLE_RATE)
            out.append([len(a.samples) // 640 % 4096, int(abs(float(a.samples.sum())) * 1000) % 4096])
        return out

    def reduce(self, units):
        return units


def _tiny_fsdd_corpus(tmp_path):
    rows = []
    (tmp_path / "wav").mkdir()
    for i, digit in enumerate(("three", "seven")):
        _vowel(0.4 + 0.1 * i, 110 + 20 * i).save(tmp_path / "wav" / f"d{i}.wav")
        rows.append({"id": f"fsdd_{i}_x_9_0", "split": "fsdd_train", "text": digit, "voice": "fsdd:x",
                     "path": f"wav/d{i}.wav"})
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_fsdd_records_get_augmented_copies(tmp_path):
    _tiny_fsdd_corpus(tmp_path)
    plain = fsdd_asr_records(tmp_path, "fsdd_train", _FakeTokenizer())
    aug = fsdd_asr_records(tmp_path, "fsdd_train", _FakeTokenizer(), copies=3, seed=0)
    again = fsdd_asr_records(tmp_path, "fsdd_train", _FakeTokenizer(), copies=3, seed=0)
    assert [r["id"] for r in plain] == ["fsdd_asr-fsdd_0_x_9_0", "fsdd_asr-fsdd_1_x_9_0"]
    assert len(aug) == 6 and aug == again
    assert [r["id"] for r in aug[:3]] == [f"fsdd_asr-fsdd_0_x_9_0-aug{k}" for k in range(3)]
    assert [r["conversations"][1]["value"] for r in aug] == ["three"] * 3 + ["seven"] * 3
    assert all("speed" in r["meta"]["augment"] for r in aug)
    assert any("tempo" in r["meta"]["augment"] or "pitch" in r["meta"]["augment"] for r in aug)
    prompts = {r["conversations"][0]["value"] for r in aug + plain}
    assert len(prompts) == 8  # every copy's units differ from each other and from the recording's
    with pytest.raises(ValueError, match="copies"):
        fsdd_asr_records(tmp_path, "fsdd_train", _FakeTokenizer(), copies=-1)


def test_cli_writes_the_augmented_records_and_names_bad_input(tmp_path, monkeypatch, capsys):
    import emova.speech.tokenizer as st
    from emova.cli import main

    _tiny_fsdd_corpus(tmp_path)
    monkeypatch.setattr(st.SpeechTokenizer, "from_pretrained", staticmethod(lambda name: _FakeTokenizer()))
    out = tmp_path / "out" / "aug.json"
    args = ["data", "fsdd-augment", "--corpus", str(tmp_path), "--copies", "2", "--out", str(out)]
    assert main(args) == 0
    recs = json.loads(out.read_text())
    assert recs == fsdd_asr_records(tmp_path, "fsdd_train", _FakeTokenizer(), copies=2)
    assert main(args) == 2 and "exists" in capsys.readouterr().err  # nothing overwritten unasked
    assert main([*args, "--overwrite", "--seed", "1"]) == 0 and json.loads(out.read_text()) != recs
    assert main([*args[:-4], "--copies", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert "--copies" in capsys.readouterr().err
    bad = tmp_path / "aug.yaml"
    bad.write_text("speed: [1.3, 0.8]\n")
    assert main([*args, "--overwrite", "--augment", str(bad)]) == 2
    assert "wave augment speed" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # held-out splits cannot be augmented into training data
        main([*args, "--split", "fsdd_val"])
