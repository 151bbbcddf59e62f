"""Tiny random model directories for the pipeline tests: our layout and the official one."""

from __future__ import annotations

from pathlib import Path

import torch

from emova.convert.speech_tokenizer import OfficialSpeechTokenizer, save_speech_tokenizer
from emova.model.modeling_emova import EmovaForConditionalGeneration
from emova.model.processor import EmovaProcessor, build_image_processor
from emova.model.tokenizer_builder import build_tokenizer
from emova.speech.s2u import S2UConfig, S2UModel
from emova.speech.tokenizer import SpeechTokenizer
from tests.model.conftest import make_config
from tests.model.test_official import write_official
from tests.test_official_speech import _randomise, tiny_config

S2U_SMALL = dict(conv_channels=32, blocks=[{"layers": 1, "dim": 32, "heads": 2}], post_dim=32, post_layers=1,
                 post_heads=2)
MIN_PIXELS, MAX_PIXELS = 56 * 56, 112 * 112


def official_speech_tokenizer_dir(path: Path) -> Path:
    """A tiny random official-layout speech tokenizer (S2U + VITS U2S + 126 style prototypes)."""
    torch.manual_seed(0)
    model = OfficialSpeechTokenizer(tiny_config()).eval()
    _randomise(model)
    return save_speech_tokenizer(model, path)


def our_layout_dir(root: Path) -> Path:
    """root/llm (tiny LLM + tokenizer + processor settings), root/speech_tokenizer (our S2U),
    root/speech_detokenizer (our U2S when emova.speech.detokenizer exists, else the official VITS)."""
    torch.manual_seed(0)
    EmovaForConditionalGeneration(make_config()).eval().save_pretrained(str(root / "llm"))
    EmovaProcessor(build_tokenizer(), build_image_processor(MIN_PIXELS, MAX_PIXELS)).save_pretrained(root / "llm")
    SpeechTokenizer(S2UModel(S2UConfig.from_dict(S2U_SMALL))).save_pretrained(root / "speech_tokenizer",
                                                                                dtype=torch.float32)
    our_detokenizer_dir(root / "speech_detokenizer")
    return root


def our_detokenizer_dir(path: Path) -> str:
    """A tiny random `SpeechDetokenizer` (our U2S) when emova.speech.detokenizer is importable and builds;
    otherwise the official VITS layout. Returns which one was written: "ours" or "official"."""
    try:
        from emova.speech.detokenizer import SpeechDetokenizer
        from emova.speech.style_encoder import StyleEncoder, StyleEncoderConfig, StylePrototypes
        from emova.speech.u2s import U2SConfig, U2SModel
        from emova.speech.vocoder import VocoderConfig, build_vocoder

        torch.manual_seed(0)
        u2s = U2SModel(U2SConfig(dim=32, enc_layers=1, dec_layers=1, predictor_layers=1))
        enc = StyleEncoder(StyleEncoderConfig(hidden=32))
        voc = build_vocoder(VocoderConfig(dim=32, intermediate=64, layers=1))
        detok = SpeechDetokenizer(u2s, enc, voc, StylePrototypes(torch.randn(126, u2s.cfg.style_dim)))
        detok.save_pretrained(path, dtype=torch.float32)
        SpeechDetokenizer.from_pretrained(path)
        return "ours"
    except Exception:  # noqa: BLE001 — the module is still being built; fall back to the official decoder
        official_speech_tokenizer_dir(path)
        return "official"


def official_layout_dir(root: Path, layout: str = "official-hf") -> Path:
    """An EMOVA checkpoint in a released layout (+ its tokenizer files) and root/speech_tokenizer."""
    write_official(root, layout)
    build_tokenizer().save_pretrained(str(root))
    official_speech_tokenizer_dir(root / "speech_tokenizer")
    return root
