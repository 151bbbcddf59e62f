"""Where does the U2S lose intelligibility? `python -m emova.eval.u2s_diagnose [--model M] [-n 20]`

On held-out sentences of the held-out flite `awb` voice (the `emova eval u2s` set), pocketsphinx WER of:

    original             the flite recording itself
    gt_mel_vocoder       its log-mel through the bundled vocoder          (mel + vocoder ceiling)
    oracle_prosody       U2S on its units, teacher-forced with the clip's own durations and F0, style
                         from the clip itself                              (the mel decoder alone)
    self_reference       U2S on its units, everything predicted, style from the clip itself
    prototype_<voice>    U2S, style = mean style vector of 20 neutral training renderings of <voice>
    default_<gender>     U2S with the prototype of `Style(gender=…)` (what `emova eval u2s` scores)

Reads only the corpus (`data_cache/speech`); writes JSON (`--out`) and prints one line per row.
`--u2s-checkpoint runs/…/step-N` scores a training checkpoint's U2S inside the given detokenizer (its
prototypes, calibration and vocoder) without exporting it; with `-n 50` its `default_*` rows are the
intelligibility lines of `emova eval u2s`.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import torch

from emova.argtypes import positive_int
from emova.audio import Audio
from emova.data.speech.corpus import read_manifest
from emova.eval.u2s import Judge, heldout_awb_rows, wer
from emova.speech.detokenizer import SpeechDetokenizer, frame_f0_hz
from emova.speech.vocoder import mel_frames
from emova.styles import Style
from emova.train.u2s_data import align_durations, f0_track, load_tokenizer, reduce_with_index

PROTOTYPE_VOICES = ("flite:slt", "flite:rms", "espeak:en-us+f1", "espeak:en-us+m1")


@torch.no_grad()
def teacher_forced_clip(detok: SpeechDetokenizer, clip: Audio, raw: np.ndarray) -> dict[str, torch.Tensor]:
    """The U2S decoding a clip's own units with the clip's own timing and F0 (teacher-forced) and its style:
    `real` and `mel` (F, n_mels) — the clip's log-mel and the U2S's — `lf0` / `voiced` (F,), `style` (1, S)
    and `unit_index` (F,)."""
    vc = detok.vocoder_config
    red, raw_to_red = reduce_with_index(raw)
    real = mel_frames(clip.samples, vc)
    durs = align_durations(real.numpy(), real.numpy(), raw_to_red, len(red), vc.hop, vc.sample_rate, same=True)
    lf0, vuv = f0_track(clip.samples, vc.sample_rate, vc.hop, len(real))
    g = detok.style_vector(reference=clip)
    lf0_t, vuv_t = torch.from_numpy(lf0), torch.from_numpy(vuv.astype(np.float32))
    out = detok.u2s(torch.from_numpy(red.astype(np.int64))[None], torch.tensor([len(red)]), g,
                    torch.from_numpy(durs.astype(np.float32))[None], lf0_t[None], vuv_t[None])
    return {"real": real, "mel": out["mel"][0][: len(real)], "lf0": lf0_t, "voiced": vuv_t, "style": g,
            "unit_index": out["unit_index"][0]}


def oracle_prosody(detok: SpeechDetokenizer, clip: Audio, raw: np.ndarray) -> Audio:
    """U2S mel decoder (+ refiner) given the clip's own timing and F0 (teacher-forced), style from the clip."""
    t = teacher_forced_clip(detok, clip, raw)
    mel = detok.refine(t["mel"], t["lf0"], t["voiced"], t["style"], t["unit_index"])
    return Audio(detok.vocode(mel, f0_hz=frame_f0_hz(t["lf0"], t["voiced"])), detok.sample_rate)


@torch.no_grad()
def voice_prototype(detok: SpeechDetokenizer, corpus: Path, train_rows: list[dict], voice: str,
                    n: int = 20) -> torch.Tensor | None:
    rows = [r for r in train_rows if r["voice"] == voice and r["style"] == str(Style(gender=r["gender"]))]
    if not rows:
        return None
    random.Random(0).shuffle(rows)
    vs = torch.cat([detok.style_vector(reference=Audio.load(corpus / r["path"])) for r in rows[:n]])
    return torch.nn.functional.normalize(vs.mean(0, keepdim=True), dim=-1)


def _with_reader(u2s: torch.nn.Module, state: dict) -> torch.nn.Module:
    """The detokenizer's U2S grown by the unit reader a checkpoint has (`U2SConfig.reader_dim`), its shape read
    from the checkpoint: dim and layers from the weights, heads from the grouped position convolution."""
    from dataclasses import replace

    from emova.speech.u2s import U2SModel

    conv = state["encoder.reader.post.pos_conv.weight"]  # (dim, dim / heads, kernel)
    layers = len({k.split(".")[5] for k in state if k.startswith("encoder.reader.post.layers.layers.")})
    cfg = replace(u2s.cfg, reader_dim=int(conv.shape[0]), reader_layers=layers,
                  reader_heads=int(conv.shape[0] // conv.shape[1]), reader_kernel=int(conv.shape[2]))
    return U2SModel(cfg).to(next(u2s.parameters()).dtype)


def swap_u2s_weights(detok: SpeechDetokenizer, checkpoint: str | Path) -> None:
    """Put the U2S weights of a training checkpoint (`runs/u2s/<stage>/step-N`) into `detok`, keeping its
    prototypes, calibration and vocoder: a quick look at a run before exporting it."""
    from emova.train.checkpoint import load_model_tensors

    state = load_model_tensors(checkpoint, "u2s.", what="U2S training checkpoint")
    if "encoder.reader_proj.weight" in state and not detok.u2s.cfg.reader_dim:
        detok.u2s = _with_reader(detok.u2s, state)
    mine = detok.u2s.state_dict()
    bad = [k for k in mine if k not in state or state[k].shape != mine[k].shape]
    if bad or set(state) - set(mine):
        raise ValueError(f"{checkpoint}: its U2S does not match the detokenizer's architecture "
                         f"(e.g. {(bad or sorted(set(state) - set(mine)))[0]})")
    detok.u2s.load_state_dict({k: v.to(mine[k].dtype) for k, v in state.items()})


def diagnose(model: str = "emova-tiny", tokenizer: str = "emova-tiny", corpus: str | Path = "data_cache/speech",
             n: int = 20, out: str | Path | None = "reports/u2s_diagnose.json",
             u2s_checkpoint: str | Path | None = None) -> dict:
    corpus = Path(corpus)
    rows = heldout_awb_rows(corpus, n)
    judge, tok = Judge(), load_tokenizer(tokenizer)
    detok = SpeechDetokenizer.from_pretrained(model)
    if u2s_checkpoint:
        swap_u2s_weights(detok, u2s_checkpoint)
    clips = [Audio.load(corpus / r["path"]) for r in rows]
    refs = [r["text"] for r in rows]
    raws = [np.asarray(u) for u in tok.encode_batch(clips)]
    units = [tok.reduce(u.tolist()) for u in raws]
    res: dict = {"model": str(model), "u2s_checkpoint": str(u2s_checkpoint) if u2s_checkpoint else None,
                 "n_sentences": n, "wer": {}, "examples": {}}

    def score(name: str, audios: list[Audio]) -> None:
        hyps = [judge.transcribe(a) for a in audios]
        res["wer"][name] = round(wer(refs, hyps), 3)
        res["examples"][name] = hyps[:3]
        print(f"{name:28s} WER {res['wer'][name]:.3f}   e.g. {hyps[0]!r}", flush=True)

    score("original", clips)
    vc = detok.vocoder_config
    gt_mels = [mel_frames(c.samples, vc) for c in clips]
    score("gt_mel_vocoder", [Audio(detok.vocode(m, f0_hz=frame_f0_hz(*f0_track(c.samples, vc.sample_rate, vc.hop,
                                                                                 len(m)))), detok.sample_rate)
                             for m, c in zip(gt_mels, clips)])
    score("oracle_prosody", [oracle_prosody(detok, c, r) for c, r in zip(clips, raws)])
    score("self_reference", [detok.decode(u, reference=c) for u, c in zip(units, clips)])
    train_rows = read_manifest(corpus, ("train",))
    for voice in PROTOTYPE_VOICES:
        g = voice_prototype(detok, corpus, train_rows, voice)
        if g is not None:
            outs = [detok._mel(u, g) for u in units]
            score(f"prototype_{voice}", [Audio(detok.vocode(o["mel"], f0_hz=frame_f0_hz(o["lf0"], o["voiced"])), detok.sample_rate)
                                         for o in outs])
    for gender in ("female", "male"):
        score(f"default_{gender}", [detok.decode(u, Style(gender=gender)) for u in units])
    res["references"] = refs[:3]
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(res, indent=1))
    return res


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m emova.eval.u2s_diagnose", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="emova-tiny")
    p.add_argument("--tokenizer", default="emova-tiny")
    p.add_argument("--corpus", default="data_cache/speech")
    p.add_argument("-n", type=positive_int, default=20)
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--out", default="reports/u2s_diagnose.json")
    p.add_argument("--u2s-checkpoint", default=None,
                   help="a training checkpoint (runs/…/step-N) whose U2S weights replace the model's")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    diagnose(a.model, a.tokenizer, a.corpus, a.n, a.out, a.u2s_checkpoint)


if __name__ == "__main__":  # pragma: no cover
    main()
