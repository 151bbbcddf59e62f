"""`SpeechTokenizer`: speech → EMOVA's discrete semantic units (25 Hz, 4096 codes), and back to strings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from emova.assets import read_config, resolve_model_dir
from emova.audio import SAMPLE_RATE, Audio, as_audio
from emova.safetensors_io import load_tensors
from emova.speech.features import s2u_features
from emova.speech.reader import READER_CONFIG, READER_WEIGHTS, UnitReader
from emova.speech.s2u import S2UConfig, S2UModel

UNIT_RE = re.compile(r"<\|speech_(\d+)\|>")
SAMPLES_PER_UNIT = 640  # 40 ms at 16 kHz
FORMAT = "emova-s2u-v1"


class SpeechTokenizer:
    def __init__(self, model: S2UModel, max_seconds: float = 600.0, chunk_seconds: float = 30.0,
                 context_seconds: float = 2.0) -> None:
        self.model = model.eval()
        self.config = model.cfg
        self.max_seconds = max_seconds
        self.chunk_units = int(chunk_seconds * 25)
        self.context_units = int(context_seconds * 25)
        self._fingerprint: str | None = None
        #: the unit reader `phone_log_probs` uses (`emova.speech.reader`); None: the S2U's own CTC side
        self.reader: UnitReader | None = None

    @property
    def fingerprint(self) -> str:
        """12 hex digits of a hash of the weights and config: which tokenizer made a cached unit sequence."""
        if self._fingerprint is None:
            import hashlib

            h = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
            for k, v in sorted(self.model.state_dict().items()):
                h.update(k.encode())
                h.update(v.detach().float().contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:12]
        return self._fingerprint

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = "emova-tiny", **kwargs) -> SpeechTokenizer:
        d = resolve_model_dir(name_or_path, "speech_tokenizer")
        meta = read_config(d, "speech tokenizer")
        if meta.get("format") != FORMAT:
            raise ValueError(f"{d / 'config.json'}: unsupported format {meta.get('format')!r}; expected {FORMAT!r}")
        model = S2UModel(S2UConfig.from_dict(meta["s2u"]))
        weights = d / "model.safetensors"
        if not weights.exists():
            raise ValueError(f"{d}: missing model.safetensors")
        state = {k: v.float() for k, v in load_tensors(weights).items()}
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # tensor shapes differ from what the config builds
            lines = [x.strip() for x in str(e).splitlines() if "size mismatch" in x]
            raise ValueError(f"{weights}: checkpoint does not match the config ({len(lines)} tensor shapes differ, "
                             f"e.g. {lines[0] if lines else e})") from None
        if missing or unexpected:
            raise ValueError(f"{weights}: checkpoint does not match the config (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
        tok = cls(model, **kwargs)
        if (d / READER_CONFIG).exists() or (d / READER_WEIGHTS).exists():
            tok.attach_reader(UnitReader.load(d))
        return tok

    def attach_reader(self, reader: UnitReader | None) -> None:
        """Read phones with `reader` (None: the S2U's own CTC side). It must have been trained on this tokenizer's
        units: its recorded tokenizer fingerprint must match."""
        if reader is not None:
            if reader.codebook_size != self.codebook_size:
                raise ValueError(f"the unit reader reads {reader.codebook_size} codes, this tokenizer makes "
                                 f"{self.codebook_size}")
            want = reader.cfg.tokenizer_fingerprint
            if want and want != self.fingerprint:
                raise ValueError(f"the unit reader was trained on the units of tokenizer {want}, not this one "
                                 f"({self.fingerprint}); retrain it (`emova train reader`)")
            reader.eval()
        self.reader = reader

    def save_pretrained(self, path: str | Path, dtype: torch.dtype = torch.float32) -> Path:
        """fp32 by default: in fp16, 0.1% of units flip (measured on held-out speech), so fp16 is not lossless. The
        unit reader, where one is attached, goes along (fp16)."""
        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "s2u": self.config.to_dict(), "sample_rate": SAMPLE_RATE, "unit_rate_hz": 25}
        (d / "config.json").write_text(json.dumps(meta, indent=1))
        sd = {k: (v.to(dtype) if v.is_floating_point() and "code_norm" not in k else v).contiguous()
              for k, v in self.model.state_dict().items()}
        save_file(sd, str(d / "model.safetensors"))
        if self.reader is not None:
            self.reader.save(d)
        else:  # a reader left from another tokenizer would not match these units
            for name in (READER_CONFIG, READER_WEIGHTS):
                (d / name).unlink(missing_ok=True)
        return d

    # ----------------------------------------------------------------- encoding
    def _prepare(self, audio: str | Path | Audio) -> Audio:
        a = as_audio(audio, SAMPLE_RATE)
        return a.validate_speech(max_seconds=self.max_seconds)

    @torch.inference_mode()
    def _encode_waves(self, waves: list[np.ndarray]) -> list[dict[str, torch.Tensor]]:
        lens = torch.tensor([len(w) for w in waves])
        batch = torch.zeros(len(waves), int(lens.max()))
        for i, w in enumerate(waves):
            batch[i, : len(w)] = torch.from_numpy(w)
        mel, mel_lens = s2u_features(batch, lens)
        out = self.model.encode(mel, mel_lens)
        res = []
        for i in range(len(waves)):
            n = int(out["lengths"][i])
            res.append({"units": out["units"][i, :n], "q": out["q"][i, :n], "hidden": out["hidden"][i, :n]})
        return res

    def encode(self, audio: str | Path | Audio) -> list[int]:
        """Raw 25 Hz units in [0, 4096). Long audio is encoded in overlapping windows and stitched."""
        return self.encode_batch([audio])[0]

    def encode_batch(self, audios: list[str | Path | Audio]) -> list[list[int]]:
        prepared = [self._prepare(a).samples for a in audios]
        short = [i for i, w in enumerate(prepared) if len(w) <= self.chunk_units * SAMPLES_PER_UNIT]
        results: dict[int, list[int]] = {}
        for start in range(0, len(short), 16):
            ids = short[start : start + 16]
            for i, r in zip(ids, self._encode_waves([prepared[i] for i in ids])):
                results[i] = r["units"].tolist()
        for i, w in enumerate(prepared):
            if i not in results:
                results[i] = self._encode_long(w)
        return [results[i] for i in range(len(prepared))]

    def _encode_long(self, wave: np.ndarray) -> list[int]:
        n_total = int(S2UModel.frames_after_subsampling(torch.tensor(len(wave) // 160 + 1)))
        units: list[int] = []
        for u0 in range(0, n_total, self.chunk_units):
            u1 = min(n_total, u0 + self.chunk_units)
            c0 = max(0, u0 - self.context_units)
            c1 = min(n_total, u1 + self.context_units)
            seg = wave[c0 * SAMPLES_PER_UNIT : c1 * SAMPLES_PER_UNIT]
            got = self._encode_waves([seg])[0]["units"].tolist()
            units.extend(got[u0 - c0 : u0 - c0 + (u1 - u0)])
        if len(units) < n_total:  # the last window's edge frame
            units.extend(units[-1:] * (n_total - len(units)))
        return units

    @torch.inference_mode()
    def recognize_phones(self, audio: str | Path | Audio) -> list[str]:
        """Greedy CTC phone recognition (the training head): for evaluating what the units carry."""
        from emova.data.speech.phones import ctc_collapse, ids_to_phones

        r = self._encode_waves([self._prepare(audio).samples])[0]
        logits = self.model.ctc_logits(r["q"][None], torch.zeros(1, len(r["q"]), dtype=torch.bool))[0]
        return ids_to_phones(ctc_collapse(logits.argmax(-1).tolist()))

    @torch.inference_mode()
    def phone_log_probs(self, units: list[int]) -> torch.Tensor:
        """Per-unit phone log-probabilities (T, n_phones; index 0 the CTC blank) read from *units* alone: by the
        tokenizer's unit reader where it has one (`emova.speech.reader`), else by the CTC side the S2U was trained
        with. Raw 25 Hz or reduced units."""
        if self.reader is None:
            return self.speech_ctc_log_probs(units)
        return self.reader.log_probs(self._units_to_read(units))

    @torch.inference_mode()
    def speech_ctc_log_probs(self, units: list[int]) -> torch.Tensor:
        """`phone_log_probs` by the CTC side the S2U was trained with (FSQ code values → `post` transformer → phone
        head). Raw 25 Hz or reduced units; raw ones read better (the reduced ones lost their durations)."""
        units = self._units_to_read(units)
        q = self.model.fsq.indices_to_codes(torch.tensor(units))[None]
        logits = self.model.ctc_logits(q, torch.zeros(1, len(units), dtype=torch.bool))[0]
        return logits.float().log_softmax(-1)

    def _units_to_read(self, units: list[int]) -> list[int]:
        units = self._check(list(units))
        if not units:
            raise ValueError("no speech units to read")
        return units

    # ------------------------------------------------------------ unit strings
    @staticmethod
    def reduce(units: list[int]) -> list[int]:
        """Remove consecutive duplicates: [5, 5, 9, 9, 5] → [5, 9, 5]."""
        return [u for i, u in enumerate(units) if i == 0 or u != units[i - 1]]

    def _check(self, units: list[int]) -> list[int]:
        out = []
        for u in units:
            if isinstance(u, (bool, np.bool_)) or not isinstance(u, (int, np.integer)):
                raise ValueError(f"speech units must be integers, got {u!r}")
            if not 0 <= int(u) < self.codebook_size:
                raise ValueError(f"speech unit {u} out of range [0, {self.codebook_size})")
            out.append(int(u))
        return out

    def units_to_string(self, units: list[int]) -> str:
        return "".join(f"<|speech_{u}|>" for u in self._check(list(units)))

    def string_to_units(self, s: str) -> list[int]:
        """Parse `<|speech_12|><|speech_7|>…`; whitespace between tokens is allowed, anything else is an error."""
        if not isinstance(s, str):
            raise ValueError(f"expected a unit string, got {type(s).__name__}")
        pos, units = 0, []
        for m in UNIT_RE.finditer(s):
            gap = s[pos : m.start()]
            if gap.strip():
                raise ValueError(f"unexpected text {gap.strip()[:30]!r} in unit string at position {pos}")
            units.append(int(m.group(1)))
            pos = m.end()
        if s[pos:].strip():
            raise ValueError(f"unexpected text {s[pos:].strip()[:30]!r} at the end of the unit string")
        return self._check(units)
