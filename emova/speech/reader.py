"""The unit reader: speech units → phone probabilities (CTC), a model of its own beside the S2U.

The S2U is trained with a small CTC side (2 layers) that reads phones from the quantised codes; it exists to make
the units phonetic, and it stopped learning when the S2U did. Transcripts are chosen by how likely their phones are
in the units (`emova.inference.rescoring`), so that reading matters at inference: a reader trained on the frozen
tokenizer's units alone, longer, larger and on more speech, reads them better (docs/s2u.md, "The unit reader").

    raw 25 Hz units (B, T) → Embedding(4096, d) + Linear(FSQ code values → d) → transformer → Linear → CTC logits

The codebook is the tokenizer's: a reader is tied to the tokenizer whose units it was trained on (the tokenizer's
fingerprint is stored with it and checked on load).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from emova.speech.fsq import FSQ
from emova.speech.s2u import BlockConfig, TransformerBlock

READER_WEIGHTS = "reader.safetensors"
READER_CONFIG = "reader_config.json"


@dataclass
class UnitReaderConfig:
    fsq_levels: list[int] | None = None
    dim: int = 192
    layers: int = 2
    heads: int = 4
    n_phones: int = 70  # CTC classes incl. blank
    dropout: float = 0.1
    pos_conv_kernel: int = 15
    tokenizer_fingerprint: str = ""  # the tokenizer whose units it reads

    def __post_init__(self) -> None:
        if self.fsq_levels is None:
            self.fsq_levels = [8, 8, 8, 8]
        if not self.fsq_levels or any(int(v) < 2 for v in self.fsq_levels):
            raise ValueError(f"fsq_levels must be a non-empty list of integers >= 2, got {self.fsq_levels}")
        BlockConfig(self.layers, self.dim, self.heads)  # validates
        if self.n_phones < 2:
            raise ValueError("n_phones must be >= 2 (the blank and at least one phone)")

    @classmethod
    def from_dict(cls, d: dict) -> UnitReaderConfig:
        if not isinstance(d, dict):
            raise ValueError(f"a unit reader config is a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown unit reader config keys: {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


class UnitReader(nn.Module):
    def __init__(self, cfg: UnitReaderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.fsq = FSQ(cfg.fsq_levels)
        self.codebook_size = self.fsq.codebook_size
        self.embed = nn.Embedding(self.codebook_size, cfg.dim)
        self.from_code = nn.Linear(len(cfg.fsq_levels), cfg.dim)
        self.body = TransformerBlock(BlockConfig(cfg.layers, cfg.dim, cfg.heads), cfg.dropout, cfg.pos_conv_kernel)
        self.head = nn.Linear(cfg.dim, cfg.n_phones)

    def forward(self, units: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """units: (B, T) long in [0, codebook) → (B, T, n_phones) logits; pad_mask (B, T) True where padded."""
        if units.dim() != 2:
            raise ValueError(f"the unit reader takes (batch, time) units, got shape {tuple(units.shape)}")
        x = self.embed(units) + self.from_code(self.fsq.indices_to_codes(units))
        return self.head(self.body(x, pad_mask))

    @torch.inference_mode()
    def log_probs(self, units: list[int]) -> torch.Tensor:
        """(T, n_phones) log-probabilities of one raw unit sequence (index 0 the CTC blank)."""
        t = torch.tensor([units], dtype=torch.long)
        return self(t)[0].float().log_softmax(-1)

    def save(self, path: str | Path, dtype: torch.dtype = torch.float16) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / READER_CONFIG).write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n")
        state = {k: v.detach().to(dtype).contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(path / READER_WEIGHTS))
        return path

    @classmethod
    def load(cls, path: str | Path) -> UnitReader:
        """The reader saved in directory `path` (clear errors for a missing or malformed one)."""
        from emova.safetensors_io import load_tensors

        path = Path(path)
        cfg_path, w_path = path / READER_CONFIG, path / READER_WEIGHTS
        if not cfg_path.is_file() or not w_path.is_file():
            raise FileNotFoundError(f"no unit reader in {path}: need {READER_CONFIG} and {READER_WEIGHTS}")
        try:
            cfg = UnitReaderConfig.from_dict(json.loads(cfg_path.read_text()))
        except (json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"{cfg_path} is not a valid unit reader config: {e}") from e
        model = cls(cfg)
        state = load_tensors(w_path)
        expected = model.state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"{w_path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for k, v in state.items():
            if tuple(v.shape) != tuple(expected[k].shape):
                raise ValueError(f"{w_path}: {k} has shape {tuple(v.shape)}, the config needs {tuple(expected[k].shape)}")
        model.load_state_dict({k: v.float() for k, v in state.items()})
        return model.eval()
