"""`emova bench u2s`: real-time factor (compute seconds per second of audio) of unit-to-speech.

- tiny: the bundled detokenizer (U2S + its vocoder), and the same U2S with each other vocoder kind
- vits_size: EMOVA's decoder architecture (`VitsConfig.official()`: UVITS SynthesizerTrn, 22.05 kHz HiFi-GAN),
  random weights (speed only), with durations fixed to the unit rate (40 ms per unit) so the output length
  is that of real speech.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from emova.argtypes import positive_int
from emova.speech.detokenizer import SpeechDetokenizer
from emova.styles import Style


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def _units(n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    u = rng.integers(0, 4096, n)
    u[1:][u[1:] == u[:-1]] += 1
    return [int(x) % 4096 for x in u]


@torch.no_grad()
def _vits_rtf(n_units: int, repeats: int) -> dict:
    from emova.speech.vits import SynthesizerTrn, VitsConfig
    from emova.speech.vits.common import generate_path, sequence_mask

    cfg = VitsConfig.official()
    torch.manual_seed(0)
    m = SynthesizerTrn(cfg).eval()
    tokens = m.units_to_tokens(_units(n_units))
    lengths = torch.tensor([tokens.shape[1]])
    g = torch.nn.functional.normalize(torch.randn(1, cfg.gin_channels, 1), dim=1)
    frames_per_unit = 0.04 * cfg.sampling_rate / cfg.hop_length

    def run() -> int:
        x, m_p, logs_p, x_mask = m.enc_p(tokens, lengths)
        m.dp.infer(x, x_mask, g, noise_scale=0.8)  # timed, its output replaced by the real unit rate
        ends = torch.round(torch.arange(1, n_units + 1) * frames_per_unit)
        w = torch.diff(ends, prepend=torch.zeros(1))[None, None]
        y_mask = sequence_mask(w.sum([1, 2]).long()).unsqueeze(1).float()
        attn = generate_path(w, x_mask.unsqueeze(2) * y_mask.unsqueeze(-1))
        mp = (attn.squeeze(1) @ m_p.transpose(1, 2)).transpose(1, 2)
        z = m.flow(mp + torch.randn_like(mp) * 0.667 * torch.exp(logs_p.mean()), y_mask, g=g, reverse=True)
        return m.dec(z * y_mask, g=g).shape[-1]

    n_samples = run()
    t = _median_time(run, repeats)
    return {"params": sum(p.numel() for p in m.parameters()), "audio_s": n_samples / cfg.sampling_rate,
            "rtf": t / (n_samples / cfg.sampling_rate)}


def bench_u2s(model: str = "emova-tiny", threads: int = 2, n_units: int = 150, repeats: int = 5,
              out: str | None = "reports/bench_u2s.json", vits: bool = True) -> dict:
    torch.set_num_threads(threads)
    detok = SpeechDetokenizer.from_pretrained(model)
    units = _units(n_units)
    res: dict = {"threads": threads, "n_units": n_units, "repeats": repeats}
    audio = detok.decode(units, Style())
    t = _median_time(lambda: detok.decode(units, Style()), repeats)
    mods = (detok.u2s, detok.vocoder) + ((detok.refiner,) if detok.refiner is not None else ())
    n_params = sum(p.numel() for mod in mods for p in mod.parameters())
    res["tiny"] = {"vocoder": detok.vocoder_config.kind, "params": n_params, "audio_s": audio.duration,
                   "rtf": t / audio.duration}
    out_mel = detok._mel(units, detok.style_vector(Style()))["mel"]
    t_mel = _median_time(lambda: detok._mel(units, detok.style_vector(Style())), repeats)
    res["tiny"]["rtf_u2s_only"] = t_mel / audio.duration  # with the refiner, when there is one
    res["tiny"]["refiner_steps"] = detok.refiner.cfg.steps if detok.refiner is not None else 0
    from emova.speech.vocoder import build_vocoder

    for kind in ("vocos", "griffin_lim"):
        if kind == detok.vocoder_config.kind:
            continue
        voc = build_vocoder(detok.vocoder_config.with_kind(kind)).eval()
        with torch.no_grad():
            tv = _median_time(lambda v=voc: v(out_mel[None]), repeats)
        res[f"tiny_with_{kind}"] = {"rtf": (t_mel + tv) / audio.duration}
    if vits:
        res["vits_size"] = _vits_rtf(n_units, max(1, repeats // 2))
    print(f"U2S speed on {threads} threads, {n_units} units (median of {repeats})")
    print(f"  tiny ({res['tiny']['vocoder']})   {res['tiny']['params'] / 1e6:6.2f}M params  RTF {res['tiny']['rtf']:.4f}"
          f"  (U2S{' + refiner' if detok.refiner is not None else ''} alone {res['tiny']['rtf_u2s_only']:.4f})")
    for k, v in res.items():
        if k.startswith("tiny_with_"):
            print(f"  {k:22s}                 RTF {v['rtf']:.4f}")
    if vits:
        v = res["vits_size"]
        print(f"  VITS-size (official config) {v['params'] / 1e6:6.2f}M params  RTF {v['rtf']:.4f}")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(res, indent=1))
    return res


def main(argv: list[str] | None = None) -> None:
    """`python -m emova.eval.bench_u2s` (what `emova bench u2s` runs)."""
    import argparse

    p = argparse.ArgumentParser(prog="emova bench u2s")
    p.add_argument("--model", default="emova-tiny")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--units", type=int, default=150)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="reports/bench_u2s.json")
    p.add_argument("--no-vits", action="store_true", help="skip the VITS-size config")
    a = p.parse_args(argv)
    bench_u2s(a.model, a.threads, a.units, a.repeats, a.out, vits=not a.no_vits)


if __name__ == "__main__":  # pragma: no cover
    main()
