"""Calibrations the U2S export fits on the training renderings (never on held-out data): F0-shape gain,
prosody level / duration maps (open loop on the predictions, closed loop on the rendered audio), the
per-condition prosody table, the global-variance mel post-filter, and the style prototypes."""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from tqdm import tqdm

from emova.audio import Audio
from emova.speech.detokenizer import frame_f0_hz
from emova.speech.style_encoder import ProsodyOffsets, StyleEncoder, StylePrototypes
from emova.speech.u2s import U2SModel
from emova.speech.vocoder import VocoderConfig, mel_frames
from emova.styles import Style
from emova.train.u2s_data import U2SData


def _predicted_log_durations(u2s: U2SModel, units: torch.Tensor, style: torch.Tensor, shift: float | torch.Tensor = 0.0
                             ) -> np.ndarray:
    """log(1 + frames) per unit the duration predictor gives `units` (1, N) in `style`, plus `shift`."""
    h, m = u2s.encode(units, torch.tensor([units.shape[1]]))
    return (u2s.predict_log_durations(h, style, m)[0] + shift).numpy()


@torch.no_grad()
def calibrate_shape_gain(bundle, data: U2SData, n: int = 200) -> float:
    """Ratio of target to predicted F0-shape spread on voiced frames (predictions shrink towards 0)."""
    rng = random.Random(0)
    idx = rng.sample(range(len(data)), min(n, len(data)))
    pred_sd, true_sd = [], []
    for s in range(0, len(idx), 16):
        b = data.collate(idx[s : s + 16], rng, 0.0)
        style = bundle.style_encoder(b["ref"], b["ref_lens"])
        h, umask = bundle.u2s.encode(b["units"], b["n_units"])
        hf, fm, _ = bundle.u2s.regulate(h, b["durs"], b["n_units"], b["mel"].shape[1])
        z = bundle.u2s.pitch(hf, style, fm)[..., 0]
        for k in range(len(b["units"])):
            v = (b["vuv"][k] > 0) & (fm[k, :, 0] > 0)
            if v.sum() > 5:
                pred_sd.append(float(z[k][v].std()))
                true_sd.append(float(b["f0_shape"][k][v].std()))
    if not pred_sd:
        return 1.0
    return float(np.clip(np.median(true_sd) / max(1e-3, np.median(pred_sd)), 1.0, 2.5))


def _wls(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted least squares y ~ slope * x + intercept."""
    A = np.stack([x, np.ones_like(x)], 1) * w[:, None]
    slope, icpt = np.linalg.lstsq(A, y * w, rcond=None)[0]
    return float(slope), float(icpt)


@torch.no_grad()
def calibrate_prosody(bundle, data: U2SData, protos: StylePrototypes, per_style: int = 12) -> dict[str, float]:
    """Undo the regression-to-the-mean of what a style asks for, on the path inference takes.

    For every condition with training items: the data's mean utterance stats (median log-F0, mean
    log(1 + frames) per unit) against the prediction from that condition's *prototype* (the vector a
    style string selects at inference): the prosody head's level, and the duration predictor's mean on
    the same items' units. Fits (least squares, weighted by items) the level map `a + g * level` and a
    duration shift `k * (head log-dur - centre) + b` on the residual. Gains are clipped to sane ranges."""
    rng = random.Random(0)
    rows = []  # (n, data level, data dur, head level, head dur, predicted dur)
    for key, ids in sorted(data.by_style.items()):
        if key not in protos.index:
            continue
        pick = rng.sample(ids, min(per_style, len(ids)))
        style = protos.vector(key)[None].float()
        head = bundle.u2s.prosody(style)[0]
        pred = []
        for i in pick:
            u = torch.from_numpy(data.units[i].astype(np.int64))[None]
            pred.append(float(_predicted_log_durations(bundle.u2s, u, style).mean()))
        st = np.array([data.stats[i] for i in pick])
        rows.append((len(pick), st[:, 0].mean(), st[:, 2].mean(), float(head[0]), float(head[2]), float(np.mean(pred))))
    if len(rows) < 3:
        return {}
    r = np.array(rows)
    w = np.sqrt(r[:, 0])
    g, a = _wls(r[:, 3], r[:, 1], w)
    g = float(np.clip(g, 1.0, 3.0))
    a = float(np.average(r[:, 1] - g * r[:, 3], weights=r[:, 0]))
    centre = float(np.average(r[:, 4], weights=r[:, 0]))
    k, b = _wls(r[:, 4] - centre, r[:, 2] - r[:, 5], w)
    k = float(np.clip(k, 0.0, 3.0))
    b = float(np.average(r[:, 2] - r[:, 5] - k * (r[:, 4] - centre), weights=r[:, 0]))
    return {"level_gain": g, "level_bias": a, "rate_gain": k, "rate_center": centre, "rate_bias": b}


@torch.no_grad()
def calibrate_rendered_prosody(detok, data: U2SData, per_style: int = 4, min_items: int = 4) -> dict[str, float]:
    """Closed-loop correction of the prosody calibration, measured on what the detokenizer *outputs*.

    `calibrate_prosody` matches the levels the U2S asks for; the mel decoder then renders F0 with its own
    compression (low voices come out higher, high ones lower), and the duration shift acts per unit in
    log(1 + frames), not on the utterance length. Here, for every condition with at least `min_items`
    training renderings: decode those items' units with the condition's prototype, measure the median
    F0 of the audio (Praat) and the total length, and compare with the renderings themselves.
      * pitch: fit rendered ≈ α + β · requested level across conditions, then the level map whose
        rendered result best matches the data: level_gain, level_bias (gain clipped to [1, 3]);
      * duration: the rate_gain (grid 0–3) and rate_bias whose predicted utterance lengths best match
        the renderings' lengths (log frames, least squares).
    Training renderings only; held-out data never enters."""
    from emova.audio import f0_contour
    from emova.speech.u2s import F0_REF, F0_SCALE

    u2s, cfg = detok.u2s, detok.u2s.cfg
    rng = random.Random(1)
    rows = []  # weight, data level, head level, head log-dur, rendered level, items, predicted log-durations
    for key, ids in sorted(data.by_style.items()):
        if key not in detok.prototypes.index or len(ids) < min_items:
            continue
        pick = rng.sample(ids, min(per_style, len(ids)))
        style = detok.prototypes.vector(key)[None].float()
        head = u2s.prosody(style)[0]
        out, log_durs = [], []
        for i in pick:
            u = torch.from_numpy(data.units[i].astype(np.int64))[None]
            o = detok._mel(u[0].tolist(), style)  # U2S (+ refiner), as decode renders it
            audio = Audio(detok.vocode(o["mel"], f0_hz=frame_f0_hz(o["lf0"], o["voiced"])), detok.sample_rate)
            f0 = f0_contour(audio) if audio.duration >= 0.25 else np.zeros(1)  # Praat needs a few periods
            if (f0 > 0).sum() >= 5:
                out.append((math.log(float(np.median(f0[f0 > 0]))) - F0_REF) / F0_SCALE)
            log_durs.append(_predicted_log_durations(u2s, u, style))
        rows.append((len(pick), float(np.mean([data.stats[i][0] for i in pick])), float(head[0]), float(head[2]),
                     float(np.mean(out)) if out else math.nan, pick, log_durs))
    if len(rows) < 3:
        return {}
    w = np.sqrt(np.array([r[0] for r in rows], dtype=float))
    d_lvl, h_lvl, h_dur, r_lvl = (np.array([r[k] for r in rows]) for k in (1, 2, 3, 4))
    res: dict[str, float] = {}
    ok = np.isfinite(r_lvl)
    if ok.sum() >= 3:
        req = cfg.level_bias + cfg.level_gain * h_lvl[ok]
        beta, alpha = _wls(req, r_lvl[ok], w[ok])
        if 0.2 <= beta <= 2.0:
            want = (d_lvl[ok] - alpha) / beta  # the requested level that renders as the data's level
            g, _ = _wls(h_lvl[ok], want, w[ok])
            g = float(np.clip(g, 1.0, 3.0))
            res["level_gain"] = g
            res["level_bias"] = float(np.average(want - g * h_lvl[ok], weights=w[ok]))
    # duration: utterance length in frames, predicted vs rendered, over a grid of rate gains
    true_len = np.array([np.mean([math.log(len(data.mel[i])) for i in r[5]]) for r in rows])
    best = (math.inf, cfg.rate_gain, cfg.rate_bias)
    for k in np.arange(0.0, 3.01, 0.1):
        shift = k * (h_dur - cfg.rate_center)
        for b in np.arange(-0.3, 0.301, 0.02):
            pred = np.array([np.mean([math.log(max(1.0, float(np.clip(np.exp(ld + s + b) - 1, 0, None).sum())))
                                      for ld in r[6]]) for r, s in zip(rows, shift)])
            err = float(np.average((pred - true_len) ** 2, weights=w))
            if err < best[0]:
                best = (err, float(k), float(b))
    res["rate_gain"], res["rate_bias"] = best[1], best[2]
    return res


def _solve_rate_offset(log_durs: list[np.ndarray], target_log_len: float, lo: float = -1.0, hi: float = 1.0) -> float:
    """The shift b of every unit's log(1 + frames) whose mean log utterance length matches the target."""
    def mean_log_len(b: float) -> float:
        return float(np.mean([math.log(max(1.0, float(np.clip(np.exp(ld + b) - 1, 0, None).sum()))) for ld in log_durs]))

    if mean_log_len(lo) >= target_log_len:
        return lo
    if mean_log_len(hi) <= target_log_len:
        return hi
    for _ in range(30):  # the length grows monotonically with b
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mean_log_len(mid) < target_log_len else (lo, mid)
    return 0.5 * (lo + hi)


def _active_db(mel: np.ndarray, top_db: float = 35.0) -> float:
    """Mean loudness (dB of the frame's mel power) of the frames within `top_db` of the loudest."""
    db = 10 * np.log10(np.exp(mel.astype(np.float64)).sum(-1) + 1e-10)
    return float(db[db > db.max() - top_db].mean())


def _rendered_prosody(audio: Audio, vcfg: VocoderConfig) -> tuple[float, float, float] | None:
    """(median normalised log-F0, its robust spread, active dB) of rendered audio; None without voicing."""
    from emova.audio import f0_contour
    from emova.speech.u2s import F0_REF, F0_SCALE

    f0 = f0_contour(audio) if audio.duration >= 0.25 else np.zeros(1)  # Praat needs a few periods
    if (f0 > 0).sum() < 5:
        return None
    lf = (np.log(f0[f0 > 0]) - F0_REF) / F0_SCALE
    med = float(np.median(lf))
    return med, max(0.02, 1.4826 * float(np.median(np.abs(lf - med)))), _active_db(mel_frames(audio.samples, vcfg).numpy())


def condition_targets(data: U2SData, picks: dict[str, list[int]],
                      pitch_factors: dict[str, float] | None) -> dict[str, tuple[float, float, float]]:
    """Per condition: the renderings' mean median log-F0 (normalised), F0 spread and active dB. With
    `pitch_factors`, the level of a pitch label is its normal-pitch sibling's times the label's factor."""
    from emova.speech.u2s import F0_SCALE

    lvl = {k: float(np.mean([data.stats[i][0] for i in p])) for k, p in picks.items()}
    out = {}
    for key, pick in picks.items():
        st = Style.parse(key)
        want = lvl[key]
        sibling = str(Style(gender=st.gender, emotion=st.emotion, speed=st.speed, pitch="normal"))
        if pitch_factors and sibling in lvl:
            want = lvl[sibling] + math.log(pitch_factors[st.pitch] / pitch_factors["normal"]) / F0_SCALE
        out[key] = (want, float(np.mean([data.stats[i][1] for i in pick])),
                    float(np.mean([_active_db(data.mel[i]) for i in pick])))
    return out


@torch.no_grad()
def calibrate_condition_prosody(detok, data: U2SData, per_style: int = 8, min_items: int = 4, iters: int = 3,
                                pitch_factors: dict[str, float] | None = None,
                                max_track_error: float = 0.35) -> torch.Tensor:
    """Per-condition corrections of what the detokenizer renders, stored next to the prototypes
    (`StylePrototypes.prosody`, one `ProsodyOffsets` row per condition string).

    The global maps (`calibrate_prosody`, `calibrate_rendered_prosody`) fit one line across all
    conditions; the decoder's rendering error is not uniform (a male voice asked for a high pitch comes
    out lower than the renderings, a female one does not; a sad style comes out too loud). For every
    condition with at least `min_items` training renderings, decode up to `per_style` of their units with
    the condition's prototype (global maps applied) and compare with the renderings themselves:
      * duration: the log(1 + frames) offset per unit whose utterance lengths match the renderings'
        (solved on the predicted durations);
      * F0 level, F0 excursion and loudness: `iters` rounds of correcting each by what the audio shows
        (Praat median and robust spread of log-F0, mean dB of active frames; median over the items whose
        rendered F0 is within `max_track_error` (normalised log-F0) of what the U2S asked for).
    Pitch labels: with `pitch_factors` ({"low": 0.8, "normal": 1.0, "high": 1.25}), the target F0 level of
    a condition is its normal-pitch sibling's (same gender, emotion, speed) times the label's factor,
    so the labels keep the spacing the corpus was rendered to have even where a TTS engine realised
    less of it. Training renderings only; held-out data never enters. Conditions without data keep 0."""

    u2s, cfg = detok.u2s, detok.u2s.cfg
    vcfg = detok.vocoder_config
    protos = detok.prototypes
    table = torch.zeros(len(protos), 4)
    rng = random.Random(2)
    picks = {k: rng.sample(ids, min(per_style, len(ids))) for k, ids in sorted(data.by_style.items())
             if k in protos.index and len(ids) >= min_items}
    targets = condition_targets(data, picks, pitch_factors)
    for key, pick in tqdm(picks.items(), desc="condition prosody", unit="style", leave=False):
        want_lvl, want_sp, want_db = targets[key]
        style = protos.vector(key)[None].float()
        head = u2s.prosody(style)[0]
        units = [torch.from_numpy(data.units[i].astype(np.int64))[None] for i in pick]
        shift = float(cfg.rate_gain * (head[2] - cfg.rate_center) + cfg.rate_bias)
        log_durs = [_predicted_log_durations(u2s, u, style, shift) for u in units]
        rate = _solve_rate_offset(log_durs, float(np.mean([math.log(len(data.mel[i])) for i in pick])), -0.5, 0.5)
        level, log_spread, gain = 0.0, 0.0, 0.0
        for _ in range(iters):
            got = []
            for u in units:
                out = detok._mel(u[0].tolist(), style, offsets=ProsodyOffsets(level, rate, log_spread))
                r = _rendered_prosody(Audio(detok.vocode(out["mel"], gain, frame_f0_hz(out["lf0"], out["voiced"])), detok.sample_rate), vcfg)
                voiced = out["voiced"] > 0
                asked = float(out["lf0"][voiced].median()) if voiced.any() else math.nan
                # a render whose median F0 is far (> ~20 %) from what was asked is a tracking error (octave
                # jumps, creak below ~80 Hz), not a level to correct
                if r is not None and abs(r[0] - asked) <= max_track_error:
                    got.append(r)
            if not got:
                break
            g = np.median(np.array(got), axis=0)
            level = float(np.clip(level + want_lvl - g[0], -0.4, 0.4))
            log_spread = float(np.clip(log_spread + math.log(want_sp / g[1]), -0.7, 0.7))
            gain = float(np.clip(gain + want_db - g[2], -12.0, 12.0))
        table[protos.index[key]] = torch.tensor([level, rate, log_spread, gain])
    return table


@torch.no_grad()
def calibrate_mel_gv(u2s: U2SModel, data: U2SData, protos: StylePrototypes, n: int = 200) -> dict[str, list[float]]:
    """Global-variance post-filter constants: per mel bin, the spread of real training mels against the
    spread of what the U2S draws for the same items (its own durations and F0, the item's condition
    prototype), both around the real mels' per-bin mean. Exactly timed (neutral) items; scale clipped to
    [1, 1.5]. Training renderings only."""
    rng = random.Random(3)
    ids = [i for i in range(len(data)) if data.exact[i]] or list(range(len(data)))
    ids = rng.sample(ids, min(n, len(ids)))
    real = np.concatenate([data.mel[i].astype(np.float32) for i in ids])
    mean = real.mean(0)
    drawn = []
    saved = (u2s.cfg.gv_mean, u2s.cfg.gv_scale)
    u2s.cfg.gv_mean = u2s.cfg.gv_scale = None
    try:
        for i in ids:
            u = torch.from_numpy(data.units[i].astype(np.int64))[None]
            drawn.append(u2s.infer(u, protos.vector(data.meta[i]["style"])[None].float())["mel"].float().numpy())
    finally:
        u2s.cfg.gv_mean, u2s.cfg.gv_scale = saved
    drawn_all = np.concatenate(drawn)
    scale = np.sqrt(((real - mean) ** 2).mean(0) / np.maximum(((drawn_all - mean) ** 2).mean(0), 1e-6))
    return {"gv_mean": [float(x) for x in mean], "gv_scale": [float(x) for x in np.clip(scale, 1.0, 1.5)]}


@torch.no_grad()
def build_prototypes(encoder: StyleEncoder, data: U2SData, per_style: int) -> StylePrototypes:
    encoder.eval()

    def encode(ids: list[int]) -> torch.Tensor:
        mels = [torch.from_numpy(data.mel[i].astype(np.float32)) for i in ids]
        lens = torch.tensor([len(m) for m in mels])
        return encoder(torch.nn.utils.rnn.pad_sequence(mels, batch_first=True), lens)

    return StylePrototypes.build(encode, [(i, m["style"]) for i, m in enumerate(data.meta)], per_style)


