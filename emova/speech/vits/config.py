"""Typed configuration of the EMOVA U2S decoder (UVITS `SynthesizerTrn`).

`VitsConfig.official()` is the released `40ms_multilingual_8888_xujing_cosyvoice_FT` model.
Its values come from the official UVITS code (`models.py`: hard-coded posterior / flow / duration
sizes; `text/symbols.py`: the 4274-row symbol table) and the released checkpoint's tensor shapes
(n_speakers = 1344, gin_channels = 256), with the VITS defaults for the rest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


def _check_keys(cls: type, data: dict[str, Any], where: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown key(s) in {where}: {', '.join(unknown)}; accepted: {', '.join(sorted(known))}")


@dataclass(frozen=True)
class VitsConfig:
    # unit vocabulary: symbol table = `unit_offset` text symbols followed by `n_units` unit ids
    n_units: int = 4096
    unit_offset: int = 178
    # audio
    sampling_rate: int = 22050
    filter_length: int = 1024  # spec_channels = filter_length // 2 + 1
    hop_length: int = 256
    # unit encoder
    inter_channels: int = 192
    hidden_channels: int = 192
    filter_channels: int = 768
    n_heads: int = 2
    n_layers: int = 6
    kernel_size: int = 3
    p_dropout: float = 0.1
    window_size: int = 4
    # generator
    resblock: str = "1"
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2)
    upsample_initial_channel: int = 512
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4)
    # conditioning
    gin_channels: int = 256
    n_speakers: int = 1344
    use_ref_enc: bool = True
    ref_mode: str = "determinant"
    style_kernel_size: int = 5
    style_heads: int = 2
    # duration
    use_sdp: bool = True
    sdp_kernel_size: int = 3
    sdp_p_dropout: float = 0.5
    sdp_n_flows: int = 4
    spline_bins: int = 10
    spline_tail_bound: float = 5.0
    dp_filter_channels: int = 256
    # posterior encoder and flow (hard-coded in the original SynthesizerTrn)
    posterior_kernel_size: int = 5
    posterior_dilation_rate: int = 1
    posterior_layers: int = 16
    flow_kernel_size: int = 5
    flow_dilation_rate: int = 1
    flow_layers: int = 4
    flow_n_flows: int = 4

    def __post_init__(self) -> None:
        for name in ("resblock_kernel_sizes", "upsample_rates", "upsample_kernel_sizes"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        object.__setattr__(
            self, "resblock_dilation_sizes", tuple(tuple(int(d) for d in ds) for ds in self.resblock_dilation_sizes)
        )
        self.validate()

    @property
    def n_vocab(self) -> int:
        return self.unit_offset + self.n_units

    @property
    def spec_channels(self) -> int:
        return self.filter_length // 2 + 1

    def validate(self) -> None:
        def need(cond: bool, fld: str, msg: str) -> None:
            if not cond:
                raise ValueError(f"VitsConfig.{fld}: {msg} (got {getattr(self, fld)!r})")

        for fld in ("n_units", "inter_channels", "hidden_channels", "filter_channels", "n_heads", "n_layers",
                    "kernel_size", "upsample_initial_channel", "sampling_rate", "hop_length", "filter_length"):
            need(isinstance(getattr(self, fld), int) and getattr(self, fld) > 0, fld, "must be a positive integer")
        need(self.unit_offset >= 0, "unit_offset", "must be >= 0")
        need(self.gin_channels >= 0, "gin_channels", "must be >= 0")
        need(self.hidden_channels % self.n_heads == 0, "hidden_channels", "must be divisible by n_heads")
        need(self.inter_channels % 2 == 0, "inter_channels", "must be even (coupling flows split it in half)")
        need(self.resblock in ("1", "2"), "resblock", "must be '1' or '2'")
        need(len(self.upsample_rates) == len(self.upsample_kernel_sizes), "upsample_kernel_sizes",
             "must have one entry per upsample rate")
        need(len(self.resblock_kernel_sizes) == len(self.resblock_dilation_sizes), "resblock_dilation_sizes",
             "must have one entry per resblock kernel size")
        prod = 1
        for r in self.upsample_rates:
            prod *= r
        need(prod == self.hop_length, "upsample_rates", f"must multiply to hop_length={self.hop_length}")
        need(self.upsample_initial_channel % (2 ** len(self.upsample_rates)) == 0, "upsample_initial_channel",
             "must be divisible by 2 ** len(upsample_rates)")
        need(self.ref_mode in ("determinant", "entropy"), "ref_mode", "must be 'determinant' or 'entropy'")
        need(self.n_speakers >= 0, "n_speakers", "must be >= 0")
        need(self.posterior_kernel_size % 2 == 1 and self.flow_kernel_size % 2 == 1, "flow_kernel_size",
             "WaveNet kernels must be odd")

    # ------------------------------------------------------------------ I/O
    @classmethod
    def official(cls) -> VitsConfig:
        return cls()

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "u2s_config") -> VitsConfig:
        """Strict: unknown keys raise ValueError naming them."""
        _check_keys(cls, data, where)
        try:
            return cls(**data)
        except TypeError as e:
            raise ValueError(f"bad {where}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: (list(map(list, v)) if k == "resblock_dilation_sizes" else list(v) if isinstance(v, tuple) else v)
                for k, v in d.items()}

    @classmethod
    def from_hparams(cls, hps: dict[str, Any]) -> VitsConfig:
        """Read an original UVITS `config.json` ({"train", "data", "model"} sections)."""
        for sec in ("data", "model"):
            if sec not in hps:
                raise ValueError(f"UVITS config lacks the '{sec}' section")
        data, model = hps["data"], dict(hps["model"])
        ignored_model = {"use_spectral_norm", "n_layers_q", "use_sdp", "use_ref_enc", "ref_mode"}
        known = {f.name for f in dataclasses.fields(cls)} | ignored_model
        unknown = sorted(set(model) - known)
        if unknown:
            raise ValueError(f"unknown key(s) in UVITS config 'model' section: {', '.join(unknown)}")
        kw = {k: v for k, v in model.items() if k in {f.name for f in dataclasses.fields(cls)}}
        for k in ("use_sdp", "use_ref_enc", "ref_mode"):
            if k in model:
                kw[k] = model[k]
        kw.update(
            sampling_rate=int(data.get("sampling_rate", 22050)),
            filter_length=int(data.get("filter_length", 1024)),
            hop_length=int(data.get("hop_length", 256)),
            n_speakers=int(data.get("n_speakers", 0)),
        )
        return cls(**kw)
