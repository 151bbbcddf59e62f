"""Input features of the speech tokenizer: 128-bin log-mel, 20 ms window, 10 ms hop, normalised
per feature (each mel bin to zero mean / unit variance over the utterance's real frames)."""

from __future__ import annotations

import torch

from emova.audio import HOP, log_mel


def mel_lengths(wave_lens: torch.Tensor) -> torch.Tensor:
    return wave_lens // HOP + 1


def normalise_per_feature(mel: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """mel: (B, M, F); statistics over the first lens[b] frames of each item. Padding is set to 0."""
    F_ = mel.shape[-1]
    mask = (torch.arange(F_, device=mel.device)[None] < lens[:, None]).to(mel.dtype)[:, None]  # (B,1,F)
    n = mask.sum(-1, keepdim=True).clamp(min=1)
    mean = (mel * mask).sum(-1, keepdim=True) / n
    var = (((mel - mean) * mask) ** 2).sum(-1, keepdim=True) / n
    return (mel - mean) / torch.sqrt(var + 1e-5) * mask


def s2u_features(waves: torch.Tensor, wave_lens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """waves: (B, T) 16 kHz, zero-padded → (normalised log-mel (B, 128, F), frame counts (B,))."""
    if waves.dim() == 1:
        waves = waves[None]
    if wave_lens is None:
        wave_lens = torch.full((waves.shape[0],), waves.shape[1], dtype=torch.long)
    mel = log_mel(waves)
    lens = mel_lengths(wave_lens).clamp(max=mel.shape[-1])
    return normalise_per_feature(mel, lens), lens
