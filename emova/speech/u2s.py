"""The tiny trainable U2S: reduced speech units + a 256-d style vector → log-mel frames.

    reduced units (B, N)
      → embedding + transformer unit encoder (content only)          h   (B, N, D)
      → duration predictor  (sees h and the style)                  log(1 + frames per unit)
      → length regulation   (fractional durations, rounded cumsum)  h_f (B, F, D)
      → F0 predictor        (sees h_f and the style)                F0 *shape* (z-scored) + voicing
      → prosody head        (style only)                            utterance log-F0 mean and spread
      → log-F0 = mean + spread * shape
      → decoder: ConvNeXt blocks, FiLM(style) in every block, + F0 embedding  → (B, F, n_mels)

Units carry no pitch, speed or speaker (the S2U is trained to drop them), so everything prosodic
comes from the style vector: it conditions the duration predictor, the F0 predictor, the prosody
head and every decoder block. The level and range of the pitch come from the style alone (a global
head trained on per-utterance statistics), so regression towards the mean inside the contour
predictor cannot flatten the pitch or emotion a style asks for, and the contour of a frame never
depends on frames far away (streaming decodes the same pitch as a full decode).

Mel: 16 kHz, n_fft 1024, hop 256 (16 ms), 80 bins, natural-log power (`emova.audio.log_mel`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from emova.speech.fsq import FSQ
from emova.speech.s2u import BlockConfig, TransformerBlock

F0_REF = math.log(150.0)  # normalised log-F0 = (log f0 - F0_REF) / F0_SCALE
F0_SCALE = 0.5


@dataclass
class U2SConfig:
    n_units: int = 4096
    sample_rate: int = 16_000
    n_fft: int = 1024
    hop: int = 256
    win: int = 1024
    n_mels: int = 80
    dim: int = 160
    enc_layers: int = 3
    enc_heads: int = 2
    dec_layers: int = 5
    dec_kernel: int = 7
    style_dim: int = 256
    predictor_layers: int = 2
    predictor_kernel: int = 5
    f0_bins: int = 128
    f0_min: float = 50.0
    f0_max: float = 700.0
    dropout: float = 0.0  # dropout costs ~20% of a CPU step and a few-epoch run does not overfit
    # Where a frame lies inside its unit (fraction, frames since the start, frames to the end, unit length),
    # added to the length-regulated states: without it every frame of a unit starts from the same vector
    # and transitions can only come from the decoder's convolutions. Zero-initialised (off = the first
    # bundled architecture).
    frame_position: bool = False
    # The S2U's unit reader: its CTC side (FSQ code values → `from_code` → `post` transformer), which reads
    # phones from unit sequences of every training voice, copied from the S2U and frozen; its states join
    # the unit embedding through a zero-initialised projection (0 = off, the bundled architecture). The
    # reader sees the codes' 4 digits, so a code heard rarely still lands near its neighbours.
    reader_dim: int = 0
    reader_layers: int = 2
    reader_heads: int = 4
    reader_kernel: int = 15
    fsq_levels: tuple[int, ...] = (8, 8, 8, 8)
    shape_gain: float = 1.0  # calibrated after training: undoes the shrinkage of the predicted F0 shape
    # Prosody calibration (fitted after training on the training corpus, `calibrate_prosody`): regression
    # towards the mean shrinks what the style asks for. Inference uses
    #   log-F0 level = level_bias + level_gain * head level
    #   log(1 + frames) per unit += rate_gain * (head log-dur - rate_center) + rate_bias
    # The defaults are the identity.
    level_gain: float = 1.0
    level_bias: float = 0.0
    rate_gain: float = 0.0
    rate_center: float = 0.0
    rate_bias: float = 0.0
    # Global-variance post-filter (fitted at export, `calibrate_mel_gv`): a mel decoder trained with an L1
    # loss draws each bin with less spread than real speech; inference maps every bin as
    #   mel' = gv_mean + gv_scale * (mel - gv_mean)
    # with per-bin constants (not per-utterance statistics, so a streamed chunk is filtered exactly like
    # the full decode). None: off.
    gv_mean: list[float] | None = None
    gv_scale: list[float] | None = None

    def __post_init__(self) -> None:
        for k in ("n_units", "sample_rate", "n_fft", "hop", "win", "n_mels", "dim", "enc_layers", "enc_heads",
                  "dec_layers", "dec_kernel", "style_dim", "predictor_layers", "predictor_kernel", "f0_bins"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"U2SConfig.{k} must be a positive integer, got {v!r}")
        if self.dim % self.enc_heads:
            raise ValueError(f"U2SConfig.dim ({self.dim}) must be divisible by enc_heads ({self.enc_heads})")
        if not isinstance(self.reader_dim, int) or isinstance(self.reader_dim, bool) or self.reader_dim < 0:
            raise ValueError(f"U2SConfig.reader_dim must be an integer >= 0 (0: no reader), got {self.reader_dim!r}")
        self.fsq_levels = tuple(int(x) for x in self.fsq_levels)
        if self.reader_dim:
            BlockConfig(self.reader_layers, self.reader_dim, self.reader_heads)  # validates layers/dim/heads
            if self.reader_kernel % 2 == 0:
                raise ValueError("U2SConfig.reader_kernel must be odd")
            if math.prod(self.fsq_levels) != self.n_units:
                raise ValueError(f"U2SConfig.fsq_levels {list(self.fsq_levels)} give {math.prod(self.fsq_levels)} "
                                 f"codes, not n_units = {self.n_units}")
        if self.dec_kernel % 2 == 0 or self.predictor_kernel % 2 == 0:
            raise ValueError("U2SConfig.dec_kernel and predictor_kernel must be odd")
        if not 0 < self.f0_min < self.f0_max:
            raise ValueError(f"U2SConfig needs 0 < f0_min < f0_max, got {self.f0_min}, {self.f0_max}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"U2SConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.win > self.n_fft:
            raise ValueError("U2SConfig.win must be <= n_fft")
        if (self.gv_mean is None) != (self.gv_scale is None):
            raise ValueError("U2SConfig.gv_mean and gv_scale must be given together")
        for k in ("gv_mean", "gv_scale"):
            v = getattr(self, k)
            if v is not None:
                if (not isinstance(v, (list, tuple)) or len(v) != self.n_mels
                        or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)):
                    raise ValueError(f"U2SConfig.{k} must be {self.n_mels} finite numbers")
                setattr(self, k, [float(x) for x in v])
        if self.gv_scale is not None and not all(0.5 <= x <= 2.0 for x in self.gv_scale):
            raise ValueError("U2SConfig.gv_scale values must lie in [0.5, 2]")

    @classmethod
    def from_dict(cls, d: dict) -> U2SConfig:
        if not isinstance(d, dict):
            raise ValueError(f"U2S config must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown U2S config keys: {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fsq_levels"] = list(self.fsq_levels)
        return d

    @property
    def frames_per_unit(self) -> float:
        """Mel frames per 40 ms unit."""
        return 0.04 * self.sample_rate / self.hop


TINY = U2SConfig()


class FiLM(nn.Module):
    """x * (1 + gamma(s)) + beta(s); zero-initialised so training starts from the identity."""

    def __init__(self, style_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(style_dim, 2 * dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:  # x (B, T, D), s (B, S)
        gamma, beta = self.proj(s)[:, None].chunk(2, dim=-1)
        return x * (1 + gamma) + beta


class ConvNeXtBlock(nn.Module):
    """Depthwise conv → LayerNorm → FiLM(style) → pointwise MLP, residual. Works on (B, T, D)."""

    def __init__(self, dim: int, kernel: int, style_dim: int, dropout: float) -> None:
        super().__init__()
        self.dw = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.film = FiLM(style_dim, dim)
        self.pw1 = nn.Linear(dim, 3 * dim)
        self.pw2 = nn.Linear(3 * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # mask: (B, T, 1), 1 inside the sequence
        y = self.dw((x * mask).transpose(1, 2)).transpose(1, 2)
        y = self.film(self.norm(y), s)
        y = self.pw2(self.drop(F.gelu(self.pw1(y))))
        return (x + y) * mask


class Predictor(nn.Module):
    """A small style-conditioned conv stack → `n_out` values per position."""

    def __init__(self, dim: int, style_dim: int, layers: int, kernel: int, n_out: int, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, kernel, style_dim, dropout) for _ in range(layers))
        self.style_in = nn.Linear(style_dim, dim)
        self.out = nn.Linear(dim, n_out)

    def forward(self, x: torch.Tensor, s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.style_in(s)[:, None]
        for b in self.blocks:
            x = b(x, s, mask)
        return self.out(x) * mask


class UnitReader(nn.Module):
    """The S2U's CTC side over unit ids: FSQ code values → `from_code` → `post` (the names of the S2U's own
    modules, so `load_s2u` copies them as they are). Frozen: it keeps reading units the way the S2U learned to
    read phones from them."""

    def __init__(self, cfg: U2SConfig) -> None:
        super().__init__()
        self.fsq = FSQ(cfg.fsq_levels)
        self.from_code = nn.Linear(len(cfg.fsq_levels), cfg.reader_dim)
        self.post = TransformerBlock(BlockConfig(cfg.reader_layers, cfg.reader_dim, cfg.reader_heads), 0.0,
                                     cfg.reader_kernel)
        self.requires_grad_(False)

    def load_s2u(self, s2u: nn.Module) -> None:
        """Copy the reader from an `emova.speech.s2u.S2UModel` with the same code grid and post-net shape."""
        if list(s2u.cfg.fsq_levels) != list(self.fsq.levels.tolist()):
            raise ValueError(f"the S2U's FSQ levels {list(s2u.cfg.fsq_levels)} are not this U2S's "
                             f"{self.fsq.levels.tolist()}")
        for name in ("from_code", "post"):
            mine, theirs = getattr(self, name).state_dict(), getattr(s2u, name).state_dict()
            if {k: v.shape for k, v in mine.items()} != {k: v.shape for k, v in theirs.items()}:
                raise ValueError(f"the S2U's {name} does not match this U2S's reader (reader_dim, reader_layers, "
                                 f"reader_heads, reader_kernel must be the S2U's post_dim, post_layers, "
                                 f"post_heads, pos_conv_kernel)")
            getattr(self, name).load_state_dict({k: v.float() for k, v in theirs.items()})

    def forward(self, units: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        # units (B, N) → (B, N, reader_dim)
        codes = self.fsq.indices_to_codes(units.masked_fill(pad, 0))
        return self.post(self.from_code(codes), pad if units.shape[0] > 1 else None)


class UnitEncoder(nn.Module):
    """Unit embedding (+ the frozen unit reader's states, when configured) + convolutional (relative) position
    + pre-norm transformer. Style-free."""

    def __init__(self, cfg: U2SConfig) -> None:
        super().__init__()
        self.emb = nn.Embedding(cfg.n_units, cfg.dim)
        nn.init.normal_(self.emb.weight, 0.0, cfg.dim**-0.5)
        if cfg.reader_dim:
            self.reader = UnitReader(cfg)
            self.reader_proj = nn.Linear(cfg.reader_dim, cfg.dim)
            nn.init.zeros_(self.reader_proj.weight)
            nn.init.zeros_(self.reader_proj.bias)
        self.pos = nn.Conv1d(cfg.dim, cfg.dim, 9, padding=4, groups=cfg.enc_heads)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.enc_heads, cfg.dim * 4, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, cfg.enc_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, units: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        # units (B, N); pad (B, N) True at padding → (B, N, D)
        x = self.emb(units)
        if hasattr(self, "reader"):
            x = x + self.reader_proj(self.reader(units, pad))
        x = x.masked_fill(pad[..., None], 0.0)
        x = x + F.gelu(self.pos(x.transpose(1, 2))).transpose(1, 2)
        return self.norm(self.layers(x, src_key_padding_mask=pad if pad.any() else None))


def _unit_ends(durations: torch.Tensor, n_units: torch.Tensor) -> torch.Tensor:
    N = durations.shape[1]
    valid = torch.arange(N, device=durations.device)[None] < n_units[:, None]
    return torch.round(torch.cumsum(durations.clamp(min=0) * valid, dim=1)).long()  # (B, N)


def regulate_indices(durations: torch.Tensor, n_units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fractional durations (B, N) in frames → frame-to-unit index (B, F) and frame counts (B,).

    Unit i covers frames [round(c_{i-1}), round(c_i)) where c is the cumulative sum, so rounding errors
    never accumulate and the total is round(sum(d))."""
    return _indices_from_ends(_unit_ends(durations, n_units))


def _indices_from_ends(ends: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    B, N = ends.shape
    n_frames = ends[:, -1].clamp(min=1)
    Fmax = int(n_frames.max())
    frames = torch.arange(Fmax, device=ends.device)[None, :].expand(B, Fmax)
    idx = torch.searchsorted(ends, frames.contiguous(), right=True).clamp(max=N - 1)  # (B, F)
    return idx, n_frames


def frame_positions(durations: torch.Tensor, n_units: torch.Tensor, idx: torch.Tensor,
                    ends: torch.Tensor | None = None) -> torch.Tensor:
    """Per frame (B, F, 4): fraction of its unit elapsed (at the frame centre), frames since the unit's
    start and to its end, and the unit's length (the last three / 8). `idx` from `regulate_indices`;
    `ends` (the rounded cumulative durations) when the caller already has them."""
    ends = (_unit_ends(durations, n_units) if ends is None else ends).float()
    starts = F.pad(ends, (1, 0))[:, :-1]
    s = torch.gather(starts, 1, idx)
    e = torch.gather(ends, 1, idx)
    t = torch.arange(idx.shape[1], device=idx.device, dtype=torch.float32)[None]
    length = (e - s).clamp(min=1.0)
    since, until = (t - s).clamp(min=0.0), (e - t - 1).clamp(min=0.0)
    return torch.stack([(since + 0.5) / length, since / 8, until / 8, length / 8], dim=-1)


class U2SModel(nn.Module):
    def __init__(self, cfg: U2SConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D, S = cfg.dim, cfg.style_dim
        self.encoder = UnitEncoder(cfg)
        self.duration = Predictor(D, S, cfg.predictor_layers, 3, 1, cfg.dropout)
        self.pitch = Predictor(D, S, cfg.predictor_layers, cfg.predictor_kernel, 2, cfg.dropout)
        self.prosody = nn.Sequential(nn.Linear(S, 256), nn.GELU(), nn.Linear(256, 3))  # lf0 mean, lf0 std, log dur
        self.f0_emb = nn.Embedding(cfg.f0_bins + 1, D)  # last row: unvoiced
        edges = torch.linspace(math.log(cfg.f0_min), math.log(cfg.f0_max), cfg.f0_bins - 1)
        self.register_buffer("f0_edges", edges, persistent=False)
        self.dec_in = nn.Linear(D, D)
        if cfg.frame_position:
            self.frame_pos = nn.Linear(4, D)
            nn.init.zeros_(self.frame_pos.weight)
            nn.init.zeros_(self.frame_pos.bias)
        self.decoder = nn.ModuleList(ConvNeXtBlock(D, cfg.dec_kernel, S, cfg.dropout) for _ in range(cfg.dec_layers))
        self.dec_norm = nn.LayerNorm(D)
        self.to_mel = nn.Linear(D, cfg.n_mels)

    # ------------------------------------------------------------------ pieces
    def encode(self, units: torch.Tensor, n_units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pad = torch.arange(units.shape[1], device=units.device)[None] >= n_units[:, None]
        return self.encoder(units, pad), (~pad).float()[..., None]

    def predict_log_durations(self, h: torch.Tensor, style: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.duration(h, style, mask)[..., 0]  # (B, N): log(1 + frames)

    def regulate(self, h: torch.Tensor, durations: torch.Tensor, n_units: torch.Tensor,
                 n_frames_out: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unit states (B, N, D) → frame states (B, F, D), the frame mask (B, F, 1) and each frame's unit
        (B, F); F = n_frames_out (teacher forcing: the target's length) or the longest regulated length."""
        ends = _unit_ends(durations.float(), n_units)
        idx, n_frames = _indices_from_ends(ends)
        Fr = idx.shape[1] if n_frames_out is None else n_frames_out
        idx = F.pad(idx, (0, max(0, Fr - idx.shape[1])), value=0)[:, :Fr]
        fmask = (torch.arange(Fr, device=h.device)[None] < n_frames[:, None]).float()[..., None]
        hf = torch.gather(h, 1, idx[..., None].expand(-1, -1, h.shape[-1]))
        if self.cfg.frame_position:
            hf = hf + self.frame_pos(frame_positions(durations.float(), n_units, idx, ends))
        return hf * fmask, fmask, idx

    def f0_embedding(self, lf0: torch.Tensor, voiced: torch.Tensor) -> torch.Tensor:
        """lf0 (B, F) normalised log-F0, voiced (B, F) in {0, 1} → (B, F, D)."""
        logf = lf0 * F0_SCALE + F0_REF
        b = torch.bucketize(logf.contiguous(), self.f0_edges)
        b = torch.where(voiced > 0.5, b, torch.full_like(b, self.cfg.f0_bins))
        return self.f0_emb(b)

    def decode_mel(self, hf: torch.Tensor, lf0: torch.Tensor, voiced: torch.Tensor, style: torch.Tensor,
                   fmask: torch.Tensor) -> torch.Tensor:
        x = self.dec_in(hf) + self.f0_embedding(lf0, voiced)
        for b in self.decoder:
            x = b(x, style, fmask)
        return self.to_mel(self.dec_norm(x)) * fmask  # (B, F, n_mels)

    # ---------------------------------------------------------------- training
    def forward(self, units: torch.Tensor, n_units: torch.Tensor, style: torch.Tensor, durations: torch.Tensor,
                lf0: torch.Tensor, voiced: torch.Tensor) -> dict[str, torch.Tensor]:
        """Teacher-forced pass. durations (B, N) integer frames per unit; lf0 / voiced (B, F) targets
        with F = max(sum(durations)). Returns predictions for every loss term and each frame's unit (`unit_index`)."""
        h, umask = self.encode(units, n_units)
        log_dur = self.predict_log_durations(h, style, umask)
        hf, fmask, idx = self.regulate(h, durations, n_units, lf0.shape[1])
        pitch = self.pitch(hf, style, fmask)  # (B, F, 2)
        mel = self.decode_mel(hf, lf0, voiced, style, fmask)
        return {"log_dur": log_dur, "f0_shape": pitch[..., 0], "vuv_logit": pitch[..., 1], "mel": mel,
                "prosody": self.prosody(style), "frame_mask": fmask[..., 0], "unit_mask": umask[..., 0],
                "unit_index": idx}

    # --------------------------------------------------------------- inference
    @torch.no_grad()
    def infer(self, units: torch.Tensor, style: torch.Tensor, length_scale: float = 1.0, level_offset: float = 0.0,
              rate_offset: float = 0.0, spread_scale: float = 1.0, gv: bool = True) -> dict[str, torch.Tensor]:
        """units (1, N), style (1, S) → mel (F, n_mels), durations (N,) in frames, lf0, voiced (F,).
        `level_offset` (normalised log-F0), `rate_offset` (log(1 + frames) per unit) and `spread_scale`
        (F0 excursion) correct what the style asks for: the per-condition corrections a prototype table
        stores (`StylePrototypes.prosody`). `gv=False` leaves out the global-variance post-filter (a mel
        refiner draws the real spread instead)."""
        n = torch.tensor([units.shape[1]], device=units.device)
        h, umask = self.encode(units, n)
        pros = self.prosody(style)  # (1, 3): log-F0 level, spread, mean log(1 + frames)
        c = self.cfg
        log_dur = (self.predict_log_durations(h, style, umask) + c.rate_gain * (pros[:, 2:3] - c.rate_center)
                   + c.rate_bias + rate_offset)
        dur = (torch.exp(log_dur) - 1).clamp(min=0) * length_scale
        hf, fmask, idx = self.regulate(h, dur, n)
        pitch = self.pitch(hf, style, fmask)
        voiced = (pitch[..., 1] > 0).float()
        level = c.level_bias + c.level_gain * pros[:, :1] + level_offset
        lf0 = level + pros[:, 1:2].clamp(min=0.0) * (c.shape_gain * spread_scale) * pitch[..., 0]
        mel = self.decode_mel(hf, lf0, voiced, style, fmask)[0]
        if gv and c.gv_scale is not None:
            mean = torch.tensor(c.gv_mean, device=mel.device)
            mel = (mean + torch.tensor(c.gv_scale, device=mel.device) * (mel - mean)).clamp(min=math.log(1e-6))
        return {"mel": mel, "durations": dur[0], "lf0": lf0[0], "voiced": voiced[0], "unit_index": idx[0]}
