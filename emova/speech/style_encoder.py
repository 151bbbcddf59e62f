"""Style module: reference log-mel → 256-d L2-normalised style vector, and the prototype table.

The encoder is the VITS reference encoder `enc_r` (Meta-StyleSpeech `MelStyleEncoder`, reused from
`emova.speech.vits.style_encoder`) applied to our 80-bin log-mel, trained jointly with the U2S
decoder. Small linear heads on the style vector classify gender / emotion / pitch / speed during
training, so the space is organised by the labels the prototypes are keyed by; their mean per label is
then a faithful centre of that label (linear heads make averaging meaningful).

Prototypes are built "store-for-usage" as in EMOVA: encode corpus renderings of every condition string,
keep the mean per string (re-normalised). A condition without renderings is composed additively from
its neighbours (gender/neutral base + emotion, pitch and speed offsets).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from emova.speech.vits.style_encoder import MelStyleEncoder
from emova.styles import EMOTIONS, GENDERS, PITCHES, SPEEDS, Style, all_styles

LABELS: dict[str, tuple[str, ...]] = {"gender": GENDERS, "emotion": EMOTIONS, "pitch": PITCHES, "speed": SPEEDS}


@dataclass
class StyleEncoderConfig:
    n_mels: int = 80
    hidden: int = 128
    style_dim: int = 256
    kernel: int = 5
    heads: int = 2
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for k in ("n_mels", "hidden", "style_dim", "kernel", "heads"):
            v = getattr(self, k)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"StyleEncoderConfig.{k} must be a positive integer, got {v!r}")
        if self.hidden % self.heads:
            raise ValueError("StyleEncoderConfig.hidden must be divisible by heads")

    @classmethod
    def from_dict(cls, d: dict) -> StyleEncoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown style encoder config keys: {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


class StyleEncoder(nn.Module):
    def __init__(self, cfg: StyleEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.enc = MelStyleEncoder(cfg.n_mels, cfg.hidden, cfg.style_dim, cfg.kernel, cfg.heads, cfg.dropout)
        self.heads = nn.ModuleDict({k: nn.Linear(cfg.style_dim, len(v)) for k, v in LABELS.items()})

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """mel: (B, F, n_mels) log-mel frames (padding after `lengths`) → (B, style_dim), unit norm."""
        if mel.dim() != 3 or mel.shape[-1] != self.cfg.n_mels:
            raise ValueError(f"style encoder expects (B, F, {self.cfg.n_mels}) log-mel, got {tuple(mel.shape)}")
        x = (mel + 5.0) / 4.0  # a fixed affine rescale only: loudness is part of the style
        if lengths is None:
            return self.enc(x)
        # MelStyleEncoder's forward, with padding zeroed before every convolution so it cannot leak in
        keep = (torch.arange(mel.shape[1], device=mel.device)[None] < lengths[:, None])[..., None]  # (B, F, 1)
        e = self.enc
        h = e.spectral(x) * keep
        for block in e.temporal:
            h = block(h.transpose(1, 2)).transpose(1, 2) * keep
        h = e.fc(e.slf_attn(h, ~keep[..., 0])) * keep
        return F.normalize(h.sum(1) / keep.sum(1).clamp(min=1), dim=1)

    def label_logits(self, style: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: head(style) for k, head in self.heads.items()}

    def label_loss(self, style: torch.Tensor, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.label_logits(style)
        return sum(F.cross_entropy(logits[k], labels[k]) for k in LABELS) / len(LABELS)


def style_label_ids(style: Style | str) -> dict[str, int]:
    s = Style.parse(style)
    return {k: LABELS[k].index(getattr(s, k)) for k in LABELS}


class ProsodyOffsets(NamedTuple):
    """Corrections of how a condition is rendered (one row of `StylePrototypes.prosody`)."""

    level: float = 0.0  # added to the normalised log-F0 level
    rate: float = 0.0  # added to every unit's log(1 + frames)
    log_spread: float = 0.0  # the F0 excursion is multiplied by exp(log_spread)
    gain_db: float = 0.0  # loudness of the waveform


EMOTION_STRENGTH_RANGE = (0.0, 3.0)


def check_emotion_strength(value: float) -> float:
    """A finite number in EMOTION_STRENGTH_RANGE, else ValueError."""
    lo, hi = EMOTION_STRENGTH_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= float(value) <= hi:
        raise ValueError(f"emotion_strength must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


class StylePrototypes:
    """The table condition string → style vector (126 rows, official `u2s_style2idx` order)."""

    def __init__(self, table: torch.Tensor, counts: list[int] | None = None, prosody: torch.Tensor | None = None) -> None:
        styles = all_styles()
        if table.dim() != 2 or table.shape[0] != len(styles):
            raise ValueError(f"prototype table must have {len(styles)} rows, got shape {tuple(table.shape)}")
        self.table = F.normalize(table.float(), dim=-1)
        self.keys = [str(s) for s in styles]
        self.index = {k: i for i, k in enumerate(self.keys)}
        self.counts = counts or [0] * len(styles)
        # Per-condition prosody corrections (126, 4), measured on how the detokenizer renders each
        # condition's training items (`ProsodyOffsets` fields; zeros: none).
        if prosody is None:
            prosody = torch.zeros(len(styles), len(ProsodyOffsets._fields))
        if tuple(prosody.shape) != (len(styles), len(ProsodyOffsets._fields)) or not torch.isfinite(prosody).all():
            raise ValueError(f"prototype prosody table must be finite with shape ({len(styles)}, "
                             f"{len(ProsodyOffsets._fields)}), got {tuple(prosody.shape)}")
        self.prosody = prosody.float()

    def __len__(self) -> int:
        return len(self.keys)

    def vector(self, style: Style | str, emotion_strength: float = 1.0) -> torch.Tensor:
        """(style_dim,) vector for a Style or condition string; ValueError for unknown/malformed styles.
        `emotion_strength` s moves an emotional condition's vector along its difference from the same voice,
        pitch and speed said neutrally: normalise(v + (s - 1)(v - v_neutral)); 1 is the table itself, 0 the
        neutral vector, > 1 a more vivid emotion than the corpus average."""
        st = Style.parse(style)
        check_emotion_strength(emotion_strength)
        v = self.table[self.index[str(st)]]
        if emotion_strength == 1.0 or st.emotion == "neutral":
            return v
        neutral = self.table[self.index[str(dataclasses.replace(st, emotion="neutral"))]]
        return F.normalize(v + (emotion_strength - 1.0) * (v - neutral), dim=-1)

    def offsets(self, style: Style | str) -> ProsodyOffsets:
        """The prosody corrections stored for a condition."""
        return ProsodyOffsets(*self.prosody[self.index[str(Style.parse(style))]].tolist())

    @classmethod
    def build(cls, encode: Callable[[list[int]], torch.Tensor], rows: Iterable[tuple[int, str]],
              per_style: int = 40) -> StylePrototypes:
        """`rows`: (item id, condition string) pairs; `encode(ids) → (n, D)` style vectors. Keeps the mean
        of up to `per_style` renderings per condition; composes the rest additively."""
        by_style: dict[str, list[int]] = {}
        for item, cond in rows:
            lst = by_style.setdefault(str(Style.parse(cond)), [])
            if len(lst) < per_style:
                lst.append(item)
        styles = all_styles()
        means: dict[str, torch.Tensor] = {}
        for s in styles:
            ids = by_style.get(str(s), [])
            if ids:
                means[str(s)] = F.normalize(encode(ids).float(), dim=-1).mean(0)
        if not means:
            raise ValueError("no renderings to build style prototypes from")
        table, counts = [], []
        for s in styles:
            counts.append(len(by_style.get(str(s), [])))
            table.append(means[str(s)] if str(s) in means else _compose(s, means))
        return cls(torch.stack(table), counts)


def _compose(s: Style, means: dict[str, torch.Tensor]) -> torch.Tensor:
    """Additive composition for a condition without renderings: base(gender) + Σ field offsets."""
    def avg(pred: Callable[[Style], bool]) -> torch.Tensor | None:
        vs = [v for k, v in means.items() if pred(Style.parse(k))]
        return torch.stack(vs).mean(0) if vs else None

    base = avg(lambda t: t.gender == s.gender)
    if base is None:
        base = torch.stack(list(means.values())).mean(0)
    out = base.clone()
    for field in ("emotion", "pitch", "speed"):
        with_f = avg(lambda t, f=field: t.gender == s.gender and getattr(t, f) == getattr(s, f))
        if with_f is not None:
            out = out + (with_f - base)
    return out
