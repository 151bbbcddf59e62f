"""The official EMOVA speech tokenizer: full-size schema, strict loading, tiny end-to-end run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from emova.convert.speech_tokenizer import (
    CheckpointMismatchError,
    OfficialSpeechTokenizer,
    SpeechTokenizerConfig,
    load_official_speech_tokenizer,
    official_manifest,
    official_style2idx,
    parameter_counts,
    save_speech_tokenizer,
)
from emova.speech.spiral import BlockConfig, ConvLayerConfig, SpiralConfig, TransformerConfig
from emova.speech.vits.config import VitsConfig
from emova.styles import all_styles

ASSET = Path(__file__).parent / "assets" / "official_speech_manifest.json"


# ----------------------------------------------------------------------------- full size


def test_full_size_schema_matches_manifest_derived_from_official_sources():
    expected = json.loads(ASSET.read_text())["tensors"]
    got = official_manifest()
    assert sorted(set(expected) - set(got)) == []
    assert sorted(set(got) - set(expected)) == []
    bad = {k: (expected[k], got[k]) for k in expected if expected[k] != got[k]}
    assert bad == {}
    assert len(got) == 1109
    assert got["decoder.enc_p.emb.weight"] == [4274, 192]
    assert got["style_embedding.weight"] == [126, 256]


def test_full_size_parameter_counts():
    counts = parameter_counts()
    manifest = json.loads(ASSET.read_text())["tensors"]
    enc = sum(math.prod(s) for k, s in manifest.items() if k.startswith("encoder.")
              and not k.endswith(("window", "fb", "mask_emb", "running_mean", "running_var", "num_batches_tracked")))
    dec = sum(math.prod(s) for k, s in manifest.items() if k.startswith("decoder."))
    assert counts == {"encoder": enc, "decoder": dec, "style_embedding": 126 * 256}
    assert counts["encoder"] == 90_620_300 and counts["decoder"] == 41_874_224


def test_official_style_table():
    s2i = official_style2idx()
    assert len(s2i) == 126 and sorted(s2i.values()) == list(range(126))
    assert s2i["gender-female_emotion-neutral_speed-normal_pitch-normal"] == 41  # index used by the release
    assert set(s2i) == {str(s) for s in all_styles()}


def test_full_size_s2u_is_25hz():
    cfg = SpiralConfig.official()
    assert cfg.downsample == 4 and cfg.sample_rate // cfg.hop_length // cfg.downsample == 25
    assert cfg.codebook_size == 4096


# ----------------------------------------------------------------------------- tiny


def tiny_config() -> SpeechTokenizerConfig:
    s2u = SpiralConfig(
        n_mels=16,
        blocks=(
            BlockConfig((ConvLayerConfig(16, 5, 2), ConvLayerConfig(16, 1, 1, act=None)),
                        TransformerConfig(1, 16, 32, 2, conv_pos=8, conv_pos_groups=4)),
            BlockConfig((ConvLayerConfig(24, 5, 2), ConvLayerConfig(24, 1, 1, act=None)),
                        TransformerConfig(1, 24, 48, 2, conv_pos=8, conv_pos_groups=4)),
        ),
    )
    u2s = VitsConfig(
        inter_channels=8, hidden_channels=8, filter_channels=16, n_layers=2, upsample_rates=(4, 4),
        upsample_kernel_sizes=(8, 8), upsample_initial_channel=16, hop_length=16, filter_length=32,
        resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1, 3, 5),), gin_channels=8, n_speakers=4,
        posterior_layers=2, flow_layers=2,
    )
    return SpeechTokenizerConfig(u2s_dim_styles=8, s2u=s2u, u2s=u2s)


def _randomise(model: OfficialSpeechTokenizer) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight_g"):
                p.copy_(1.0 + 0.1 * torch.rand(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
        bn = model.encoder.quantizer.bn  # spread the 4 FSQ inputs over several levels
        bn.weight.copy_(3.0 + torch.rand(4, generator=g))
        bn.bias.zero_()
        bn.running_mean.copy_(torch.randn(4, generator=g) * 0.1)
        bn.running_var.copy_(1 + torch.rand(4, generator=g))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> tuple[Path, OfficialSpeechTokenizer]:
    torch.manual_seed(0)
    model = OfficialSpeechTokenizer(tiny_config()).eval()
    _randomise(model)
    path = save_speech_tokenizer(model, tmp_path_factory.mktemp("tok"))
    # the released file also carries the CTC phone head used to train the encoder
    tensors = load_file(str(path / "model.safetensors"))
    tensors["encoder.decoder.decoder_layers.0.weight"] = torch.zeros(5, 24, 1)
    save_file(tensors, str(path / "model.safetensors"))
    return path, model


def _speechlike(seconds: float = 1.0, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 40 * np.sin(2 * np.pi * 1.5 * t)
    return (0.3 * np.sin(2 * np.pi * np.cumsum(f0) / sr) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def test_tiny_checkpoint_uses_released_names(tiny_dir):
    path, _ = tiny_dir
    keys = set(load_file(str(path / "model.safetensors")))
    assert "decoder.enc_p.encoder.norm_layers_1.0.GAMMA" in keys
    assert "decoder.dp.flows.1.convs.norms_2.2.BETA" in keys
    assert "decoder.dec.ups.0.weight_g" in keys and "encoder.quantizer.bn.running_var" in keys
    assert not any("norm_layers" in k and k.endswith((".weight", ".gamma")) for k in keys)


def test_tiny_checkpoint_loads_strictly_and_runs(tiny_dir):
    path, original = tiny_dir
    loaded = load_official_speech_tokenizer(path)
    assert loaded.load_report.ignored == ["encoder.decoder.decoder_layers.0.weight"]
    assert loaded.load_report.renamed["decoder.enc_p.encoder.norm_layers_1.0.GAMMA"] == (
        "decoder.enc_p.encoder.norm_layers_1.0.weight")
    for k, v in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k

    wave = _speechlike(1.0)
    units = loaded.encode(wave)
    assert len(units) == 25  # 100 mel frames / 4
    assert all(0 <= u < 4096 for u in units) and len(set(units)) > 1
    assert units == original.encode(wave)
    reduced = loaded.encode(wave, reduce=True)
    assert all(a != b for a, b in zip(reduced, reduced[1:]))

    torch.manual_seed(1)
    audio, sr = loaded.decode(units[:10], "gender-male_emotion-happy_speed-fast_pitch-high")
    torch.manual_seed(1)
    ref, _ = original.decode(units[:10], "gender-male_emotion-happy_speed-fast_pitch-high")
    assert sr == 22050 and audio.dtype == np.float32
    assert audio.ndim == 1 and len(audio) > 0 and len(audio) % 16 == 0 and np.isfinite(audio).all()
    np.testing.assert_allclose(audio, ref, atol=1e-6)
    torch.manual_seed(1)
    other, _ = loaded.decode(units[:10], "gender-female_emotion-sad_speed-slow_pitch-low")
    assert other.shape != audio.shape or not np.allclose(other, audio)  # the style changes the output


def test_decode_accepts_unit_string_and_rejects_bad_input(tiny_dir):
    path, _ = tiny_dir
    tok = load_official_speech_tokenizer(path)
    audio, _ = tok.decode("<|speech_3|><|speech_4095|>", "gender-female_emotion-neutral_speed-normal_pitch-normal")
    assert len(audio) > 0
    with pytest.raises(ValueError, match="unit ids must be in"):
        tok.decode([1, 4096], "gender-female_emotion-neutral_speed-normal_pitch-normal")
    with pytest.raises(ValueError, match="emotion"):
        tok.decode([1, 2], "gender-female_emotion-bored_speed-normal_pitch-normal")
    with pytest.raises(ValueError, match="too short"):
        tok.encode(np.zeros(100, dtype=np.float32))


# ----------------------------------------------------------------------------- errors


def _copy(path: Path, tmp: Path, tensors_fn=None, config_fn=None) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((path / "config.json").read_text())
    tensors = load_file(str(path / "model.safetensors"))
    if config_fn:
        config_fn(cfg)
    if tensors_fn:
        tensors_fn(tensors)
    (tmp / "config.json").write_text(json.dumps(cfg))
    save_file(tensors, str(tmp / "model.safetensors"))
    return tmp


def test_missing_key_is_named(tiny_dir, tmp_path):
    path, _ = tiny_dir
    bad = _copy(path, tmp_path, tensors_fn=lambda t: t.pop("decoder.dec.conv_post.weight"))
    with pytest.raises(CheckpointMismatchError, match=r"1 missing key\(s\):\s+decoder.dec.conv_post.weight"):
        load_official_speech_tokenizer(bad)


def test_unexpected_key_is_named(tiny_dir, tmp_path):
    path, _ = tiny_dir

    def add(t):
        t["decoder.extra.weight"] = torch.zeros(2)

    with pytest.raises(CheckpointMismatchError, match=r"unexpected key\(s\):\s+decoder.extra.weight"):
        load_official_speech_tokenizer(_copy(path, tmp_path, tensors_fn=add))


def test_wrong_shape_is_named(tiny_dir, tmp_path):
    path, _ = tiny_dir

    def resize(t):
        t["style_embedding.weight"] = torch.zeros(126, 9)

    with pytest.raises(CheckpointMismatchError, match=r"style_embedding.weight: checkpoint \[126, 9\] vs expected \[126, 8\]"):
        load_official_speech_tokenizer(_copy(path, tmp_path, tensors_fn=resize))


def test_legacy_and_parametrization_names_are_accepted(tiny_dir, tmp_path):
    path, original = tiny_dir

    def rename(t):
        for k in list(t):
            if k.endswith(".GAMMA"):
                t[k[:-6] + ".gamma"] = t.pop(k)
            elif k.endswith(".weight_g") and k.startswith("decoder.dec.ups."):
                t[k[:-9] + ".parametrizations.weight.original0"] = t.pop(k)

    tok = load_official_speech_tokenizer(_copy(path, tmp_path, tensors_fn=rename))
    w = "decoder.dec.ups.1.weight_g"
    assert torch.equal(tok.state_dict()[w], original.state_dict()[w])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.update(bogus=1), "unknown key.*bogus"),
        (lambda c: c.pop("u2s_style2idx"), "u2s_style2idx"),
        (lambda c: c.update(u2s_num_styles=125), "u2s_style2idx must map onto every index 0..124"),
        (lambda c: c["u2s_style2idx"].update({"gender-robot_emotion-happy_speed-fast_pitch-high": 7}), "bad condition"),
        (lambda c: c.update(u2s_dim_styles=16), "u2s_dim_styles"),
        (lambda c: c["u2s_config"].update(n_heads=3), "VitsConfig.hidden_channels"),
        (lambda c: c["u2s_config"].update(upsample_rates=[4, 2]), "VitsConfig.upsample_rates"),
        (lambda c: c["s2u_config"]["blocks"][0]["conv_layers"][0].update(strde=2), r"blocks\[0\].conv_layers\[0\].*strde"),
        (lambda c: c["s2u_config"].update(fsq_levels=[8, 1]), "SpiralConfig.fsq_levels"),
        (lambda c: (c.pop("u2s_config"), c.update(u2s_unit_type="nope")), "u2s_unit_type 'nope'"),
    ],
)
def test_bad_config_names_the_field(tiny_dir, tmp_path, mutate, message):
    path, _ = tiny_dir
    with pytest.raises(ValueError, match=message):
        load_official_speech_tokenizer(_copy(path, tmp_path, config_fn=mutate))


def test_released_config_without_sub_configs_selects_full_size_architecture():
    cfg = SpeechTokenizerConfig.from_dict({
        "architectures": ["EMOVASpeechTokenizer"], "model_type": "emova_speech_tokenizer",
        "s2u_unit_type": "40ms_multilingual_8888", "u2s_unit_type": "40ms_multilingual_8888_xujing_cosyvoice_FT",
        "u2s_num_styles": 126, "u2s_dim_styles": 256, "u2s_style2idx": official_style2idx(),
        "torch_dtype": "float32", "transformers_version": "4.44.2",
    })
    assert cfg.s2u == SpiralConfig.official() and cfg.u2s == VitsConfig.official()
