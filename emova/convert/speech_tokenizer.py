"""Load the official EMOVA speech tokenizer (`Emova-ollm/emova_speech_tokenizer_hf` layout) strictly.

Directory layout::

    config.json        s2u_unit_type, u2s_unit_type, u2s_num_styles, u2s_dim_styles, u2s_style2idx
                       (+ optional `s2u_config` / `u2s_config` objects; without them the unit
                       types select the released architectures) (+ HF bookkeeping keys)
    model.safetensors  encoder.*          S2U (SPIRAL + FSQ), see emova/speech/spiral.py
                       decoder.*          U2S (UVITS SynthesizerTrn), see emova/speech/vits/
                       style_embedding.weight  (u2s_num_styles, u2s_dim_styles) = (126, 256)

Every checkpoint tensor loads by name or through one of these documented renames:

* `decoder.…GAMMA` / `…BETA` (UVITS LayerNorm; `gamma` / `beta` in pre-HF checkpoints)
  -> `…weight` / `…bias` of our ChannelLayerNorm;
* `….parametrizations.weight.original0` / `original1` (weight norm saved by newer torch)
  -> `….weight_g` / `….weight_v`;
* `encoder.decoder.*` (the CTC phone classifier used only to train the S2U encoder) is
  recognised and dropped; it is reported in `LoadReport.ignored`.

Anything else missing, unexpected or of the wrong shape raises `CheckpointMismatchError` listing
the offending keys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from emova.assets import read_config
from emova.safetensors_io import read_safetensors_dir
from emova.speech.spiral import SpiralConfig, SpiralS2U
from emova.speech.vits.common import ChannelLayerNorm
from emova.speech.vits.config import VitsConfig
from emova.speech.vits.synthesizer import SynthesizerTrn
from emova.styles import EMOTIONS, GENDERS, PITCHES, SPEEDS, Style

OFFICIAL_S2U_UNIT_TYPE = "40ms_multilingual_8888"
OFFICIAL_U2S_UNIT_TYPE = "40ms_multilingual_8888_xujing_cosyvoice_FT"
S2U_PRESETS = {OFFICIAL_S2U_UNIT_TYPE: SpiralConfig.official}
U2S_PRESETS = {OFFICIAL_U2S_UNIT_TYPE: VitsConfig.official}
IGNORED_PREFIXES: tuple[str, ...] = ("encoder.decoder.",)
HF_BOOKKEEPING_KEYS = frozenset(
    {"architectures", "auto_map", "model_type", "torch_dtype", "dtype", "transformers_version", "_name_or_path"}
)
CONFIG_KEYS = frozenset(
    {"s2u_unit_type", "u2s_unit_type", "u2s_num_styles", "u2s_dim_styles", "u2s_style2idx", "s2u_config", "u2s_config"}
)
# decode() defaults of the official `synthesis()` helper
NOISE_SCALE, NOISE_SCALE_W, LENGTH_SCALE = 0.667, 0.8, 1.0


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match the architecture its config describes."""


def official_style2idx() -> dict[str, int]:
    """The released table: condition strings in alphabetical order (index 41 = female/neutral/normal/normal)."""
    conds = [str(Style(gender=g, emotion=e, speed=s, pitch=p)) for g in GENDERS for e in EMOTIONS for s in SPEEDS
             for p in PITCHES]
    return {c: i for i, c in enumerate(sorted(conds))}


# ----------------------------------------------------------------------------- config


def _sub_config(data: dict, side: str, cls: Any, presets: dict) -> Any:
    """`{side}_config` when the directory embeds it, else the preset named by `{side}_unit_type`."""
    if f"{side}_config" in data:
        return cls.from_dict(data[f"{side}_config"])
    unit_type = data[f"{side}_unit_type"]
    if unit_type in presets:
        return presets[unit_type]()
    raise ValueError(f"config field {side}_unit_type {unit_type!r} is unknown and no {side}_config is given; "
                     f"known: {', '.join(presets)}")


@dataclass(frozen=True)
class SpeechTokenizerConfig:
    s2u_unit_type: str = OFFICIAL_S2U_UNIT_TYPE
    u2s_unit_type: str = OFFICIAL_U2S_UNIT_TYPE
    u2s_num_styles: int = 126
    u2s_dim_styles: int = 256
    u2s_style2idx: dict[str, int] = field(default_factory=official_style2idx)
    s2u: SpiralConfig = field(default_factory=SpiralConfig.official)
    u2s: VitsConfig = field(default_factory=VitsConfig.official)

    def __post_init__(self) -> None:
        if not isinstance(self.u2s_num_styles, int) or self.u2s_num_styles <= 0:
            raise ValueError(f"config field u2s_num_styles must be a positive integer, got {self.u2s_num_styles!r}")
        if self.u2s_dim_styles != self.u2s.gin_channels:
            raise ValueError(
                f"config field u2s_dim_styles ({self.u2s_dim_styles}) must equal the decoder's gin_channels "
                f"({self.u2s.gin_channels})"
            )
        s2i = self.u2s_style2idx
        if not isinstance(s2i, dict) or not s2i:
            raise ValueError("config field u2s_style2idx must be a non-empty object {condition: index}")
        for cond, idx in s2i.items():
            if not isinstance(idx, int) or isinstance(idx, bool):
                raise ValueError(f"config field u2s_style2idx[{cond!r}] must be an integer, got {idx!r}")
            try:
                Style.parse(cond)
            except ValueError as e:
                raise ValueError(f"config field u2s_style2idx has a bad condition {cond!r}: {e}") from None
        if sorted(s2i.values()) != list(range(self.u2s_num_styles)):
            raise ValueError(
                f"config field u2s_style2idx must map onto every index 0..{self.u2s_num_styles - 1} exactly once "
                f"(u2s_num_styles={self.u2s_num_styles}, got {len(s2i)} entries)"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpeechTokenizerConfig:
        if not isinstance(data, dict):
            raise ValueError(f"config.json must hold a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - CONFIG_KEYS - HF_BOOKKEEPING_KEYS)
        if unknown:
            raise ValueError(f"unknown key(s) in config.json: {', '.join(unknown)}; accepted: {', '.join(sorted(CONFIG_KEYS))}")
        if data.get("model_type", "emova_speech_tokenizer") != "emova_speech_tokenizer":
            raise ValueError(f"config field model_type must be 'emova_speech_tokenizer', got {data['model_type']!r}")
        for name in ("s2u_unit_type", "u2s_unit_type", "u2s_style2idx"):
            if name not in data:
                raise ValueError(f"config.json lacks the required field {name}")
        s2u = _sub_config(data, "s2u", SpiralConfig, S2U_PRESETS)
        u2s = _sub_config(data, "u2s", VitsConfig, U2S_PRESETS)
        s2i = data["u2s_style2idx"]
        n_styles = data.get("u2s_num_styles", len(s2i) if isinstance(s2i, dict) else 0)
        return cls(data["s2u_unit_type"], data["u2s_unit_type"], n_styles, data.get("u2s_dim_styles", u2s.gin_channels),
                   s2i, s2u, u2s)

    def to_dict(self, embed_sub_configs: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "model_type": "emova_speech_tokenizer",
            "s2u_unit_type": self.s2u_unit_type,
            "u2s_unit_type": self.u2s_unit_type,
            "u2s_num_styles": self.u2s_num_styles,
            "u2s_dim_styles": self.u2s_dim_styles,
            "u2s_style2idx": dict(self.u2s_style2idx),
        }
        if embed_sub_configs:
            d["s2u_config"] = self.s2u.to_dict()
            d["u2s_config"] = self.u2s.to_dict()
        return d


# ----------------------------------------------------------------------------- model


class OfficialSpeechTokenizer(nn.Module):
    """S2U encoder + U2S decoder + the style prototype table, as in the released checkpoint."""

    def __init__(self, config: SpeechTokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = SpiralS2U(config.s2u)
        self.decoder = SynthesizerTrn(config.u2s)
        self.style_embedding = nn.Embedding(config.u2s_num_styles, config.u2s_dim_styles)

    @property
    def style2idx(self) -> dict[str, int]:
        return self.config.u2s_style2idx

    @property
    def sample_rate(self) -> int:
        return self.config.u2s.sampling_rate

    def encode(self, wave_16k: Any, reduce: bool = False) -> list[int]:
        """Mono 16 kHz waveform (np.ndarray, torch.Tensor or emova.Audio) -> unit ids at 25 Hz."""
        from emova.audio import Audio

        if isinstance(wave_16k, Audio):
            wave_16k = wave_16k.resample(self.config.s2u.sample_rate).samples
        units = self.encoder.encode(wave_16k)
        if reduce:
            units = [u for i, u in enumerate(units) if i == 0 or u != units[i - 1]]
        return units

    def style_vector(self, condition: str | Style) -> torch.Tensor:
        key = str(Style.parse(condition))
        if key not in self.style2idx:
            raise ValueError(f"style {key!r} is not in this checkpoint's u2s_style2idx ({len(self.style2idx)} styles)")
        return self.style_embedding.weight[self.style2idx[key]].detach()  # (dim_styles,)

    @torch.no_grad()
    def decode(
        self,
        units: Iterable[int] | str,
        condition: str | Style,
        noise_scale: float = NOISE_SCALE,
        length_scale: float = LENGTH_SCALE,
        noise_scale_w: float = NOISE_SCALE_W,
    ) -> tuple[np.ndarray, int]:
        """Unit ids (or a `<|speech_N|>…` string) + condition string -> (waveform float32, sample rate)."""
        if isinstance(units, str):
            found = re.findall(r"<\|speech_(\d+)\|>", units)
            if not found:
                raise ValueError("unit string contains no <|speech_N|> tokens")
            units = [int(u) for u in found]
        wave = self.decoder.infer(list(units), self.style_vector(condition), noise_scale, length_scale, noise_scale_w)
        return wave.float().cpu().numpy(), self.sample_rate


def build_official_speech_tokenizer(config: SpeechTokenizerConfig | None = None, device: str = "meta") -> OfficialSpeechTokenizer:
    with torch.device(device):
        return OfficialSpeechTokenizer(config or SpeechTokenizerConfig())


def official_key_map(model: OfficialSpeechTokenizer) -> dict[str, str]:
    """Our state-dict key -> the key the released checkpoint uses."""
    out = {k: k for k in model.state_dict()}
    for name, mod in model.named_modules():
        if isinstance(mod, ChannelLayerNorm):
            out[f"{name}.weight"] = f"{name}.GAMMA"
            out[f"{name}.bias"] = f"{name}.BETA"
    return out


def official_manifest(config: SpeechTokenizerConfig | None = None) -> dict[str, list[int]]:
    """Key -> shape of every tensor in a checkpoint of this config, in the released naming (meta device)."""
    model = build_official_speech_tokenizer(config, "meta")
    names = official_key_map(model)
    return {names[k]: list(v.shape) for k, v in model.state_dict().items()}


def export_official_state_dict(model: OfficialSpeechTokenizer) -> dict[str, torch.Tensor]:
    """Our weights under the released names (the inverse of the loader's renames)."""
    names = official_key_map(model)
    return {names[k]: v.detach().contiguous() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- loading


@dataclass
class LoadReport:
    renamed: dict[str, str] = field(default_factory=dict)  # checkpoint key -> our key, where they differ
    ignored: list[str] = field(default_factory=list)  # checkpoint keys dropped by rule (IGNORED_PREFIXES)


_RENAMES: tuple[tuple[str, str], ...] = (
    (".GAMMA", ".weight"), (".BETA", ".bias"), (".gamma", ".weight"), (".beta", ".bias"),
    (".parametrizations.weight.original0", ".weight_g"), (".parametrizations.weight.original1", ".weight_v"),
)


def _our_key(key: str, layer_norm_prefixes: set[str]) -> str:
    for old, new in _RENAMES:
        if key.endswith(old):
            stem = key[: -len(old)]
            if old.lower() in (".gamma", ".beta") and stem not in layer_norm_prefixes:
                return key  # only UVITS channel LayerNorms carry GAMMA / BETA
            return stem + new
    return key


def map_official_state_dict(
    tensors: dict[str, torch.Tensor], model: OfficialSpeechTokenizer
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Rename checkpoint tensors onto `model`'s keys; raise CheckpointMismatchError on any mismatch."""
    expected = model.state_dict()
    ln_prefixes = {n for n, m in model.named_modules() if isinstance(m, ChannelLayerNorm)}
    report = LoadReport()
    mapped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    duplicates: list[str] = []
    for key, value in tensors.items():
        if key.startswith(IGNORED_PREFIXES):
            report.ignored.append(key)
            continue
        ours = _our_key(key, ln_prefixes)
        if ours in mapped:
            duplicates.append(f"{origin[ours]} and {key} both map to {ours}")
            continue
        if ours != key:
            report.renamed[key] = ours
        mapped[ours], origin[ours] = value, key
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(origin[k] for k in set(mapped) - set(expected))
    wrong = sorted(
        f"{origin[k]}: checkpoint {list(mapped[k].shape)} vs expected {list(expected[k].shape)}"
        for k in set(mapped) & set(expected) if tuple(mapped[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or wrong or duplicates:
        names = official_key_map(model)
        parts = []
        for title, items in (("missing", [names.get(k, k) for k in missing]), ("unexpected", unexpected),
                             ("wrong shape", wrong), ("duplicate", duplicates)):
            if items:
                shown = "\n  ".join(items[:40]) + (f"\n  … and {len(items) - 40} more" if len(items) > 40 else "")
                parts.append(f"{len(items)} {title} key(s):\n  {shown}")
        raise CheckpointMismatchError("checkpoint does not match the configured architecture;\n" + "\n".join(parts))
    # checkpoints may be stored in half precision; cast to the model's dtypes (float32 / int64)
    return {k: v.to(expected[k].dtype) for k, v in mapped.items()}, report


def load_official_speech_tokenizer(path: str | Path, device: str = "cpu") -> OfficialSpeechTokenizer:
    """Load a speech-tokenizer directory strictly (see the module docstring for the accepted renames)."""
    path = Path(path)
    config = SpeechTokenizerConfig.from_dict(read_config(path, "speech tokenizer"))
    model = build_official_speech_tokenizer(config, "meta")
    state, report = map_official_state_dict(read_safetensors_dir(path), model)
    model.load_state_dict(state, strict=True, assign=True)
    model.load_report = report  # type: ignore[attr-defined]
    return model.to(device).eval()


def save_speech_tokenizer(model: OfficialSpeechTokenizer, path: str | Path, embed_sub_configs: bool = True) -> Path:
    """Write `model` in the released layout (config.json + model.safetensors, released tensor names)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(model.config.to_dict(embed_sub_configs), indent=2))
    save_file(export_official_state_dict(model), str(path / "model.safetensors"))
    return path


def parameter_counts(config: SpeechTokenizerConfig | None = None) -> dict[str, int]:
    model = build_official_speech_tokenizer(config, "meta")
    return {
        "encoder": sum(p.numel() for p in model.encoder.parameters()),
        "decoder": sum(p.numel() for p in model.decoder.parameters()),
        "style_embedding": model.style_embedding.weight.numel(),
    }
