"""Training the unit reader (`emova.speech.reader`): CTC from a frozen tokenizer's raw units to phones.

Data (`build_reader_corpus`): every training clip, encoded once clean and `augment_copies` times sped up or slowed
down and with its mel axis warped (as the S2U's own training augments; a new speaker's units differ from the
training voices', and these variants teach the reader more of them), each with the phones of its sentence
(`text_to_phones`, the same transcription the rescorer scores). The clips:

- the speech corpus's training splits (`train`, `fsdd_train`: the training voices and FSDD's training speakers);
- the tiny world's training speech (`world_speech/train`: its questions and replies, training voices only).

No held-out voice, sentence or recording is read. Encoding is cached in `<out_dir>/units.jsonl`, appended as it
goes, so a killed run resumes where it stopped. Training is resumable (`<out_dir>/step-*`), shows progress, and logs
`log.csv` (+ `log.png`); `--export` writes the reader next to the tokenizer it reads.
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from emova.audio import Audio
from emova.data.speech.phones import VOCAB_SIZE, phones_to_ids, text_to_phones
from emova.speech.reader import UnitReader, UnitReaderConfig
from emova.speech.tokenizer import SpeechTokenizer
from emova.train.checkpoint import latest_checkpoint, load_checkpoint, save_step_checkpoint
from emova.train.plots import plot_log
from emova.yaml_io import load_dataclass_config


@dataclass
class ReaderTrainConfig:
    tokenizer: str = "emova-tiny"  # whose units the reader reads (name or directory)
    corpus: str = "data_cache/speech"
    world_units: str = "data_cache/world_units"  # the world's training records (the texts of its clips)
    world_speech: str = "data_cache/world_speech"  # the world's training clips
    # every sentence said or answered in this world's held-out split is left out of training (the evaluations'
    # sentences; the world's training split repeats some of its templated ones); "" for none
    heldout_world: str = "data_cache/world"
    out_dir: str = "runs/reader"
    augment_copies: int = 1
    speed_perturb: float = 0.1
    freq_warp: float = 0.1
    # The S2U's own CTC side is a reader of the same shape (from_code → `post` → head); by default the reader starts
    # from it (dim, layers and heads must then be the S2U's post_dim, post_layers, post_heads) and the unit
    # embedding from zero, so training begins where the tokenizer's reading stands.
    init_from_s2u: bool = True
    dim: int = 192
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    reduced_too: bool = True  # also train on each clip's reduced units (what the LLM's prompts hold)
    unit_noise: float = 0.03  # share of units replaced by a random code during training
    max_steps: int = 6000
    batch_units: int = 3000  # units per batch (~2 min of speech)
    lr: float = 5e-4
    warmup_steps: int = 200
    weight_decay: float = 0.01
    val_fraction: float = 0.02  # of the training *texts*, held back to watch the loss (not an evaluation)
    seed: int = 0
    save_every: int = 500
    log_every: int = 20
    keep_checkpoints: int = 2

    @classmethod
    def load(cls, path: str | Path, **overrides) -> ReaderTrainConfig:
        return load_dataclass_config(cls, path, overrides)

    def __post_init__(self) -> None:
        if self.augment_copies < 0 or self.max_steps < 1 or self.batch_units < 100:
            raise ValueError("augment_copies must be >= 0, max_steps >= 1 and batch_units >= 100")
        if not 0 <= self.unit_noise < 1 or not 0 <= self.val_fraction < 1:
            raise ValueError("unit_noise and val_fraction must be in [0, 1)")


def _training_clips(cfg: ReaderTrainConfig) -> list[tuple[str, Path, str]]:
    """(key, wav, text) of every training clip; no held-out split is read."""
    from emova.data.speech.corpus import read_manifest

    clips: list[tuple[str, Path, str]] = []
    corpus = Path(cfg.corpus)
    if not (corpus / "manifest.jsonl").is_file():
        raise FileNotFoundError(f"no speech corpus at {corpus} (build it with `emova data speech`)")
    for r in read_manifest(corpus):
        if r["split"] in ("train", "fsdd_train"):
            clips.append((f"corpus/{r['id']}", corpus / r["path"], r["text"]))
    texts: dict[str, str] = {}
    wu = Path(cfg.world_units) / "train"
    if not wu.is_dir():
        raise FileNotFoundError(f"no world training records at {wu} (build them with `emova train recipe tiny`)")
    for f in sorted(wu.glob("*.json")):
        for rec in json.loads(f.read_text()):
            for sp in (rec.get("meta") or {}).get("speech") or []:
                texts[sp["key"]] = sp["text"]
    wav_dir = Path(cfg.world_speech) / "train" / "wav"
    if not wav_dir.is_dir():
        raise FileNotFoundError(f"no world training speech at {wav_dir}")
    for wav in sorted(wav_dir.glob("*.wav")):
        key = wav.stem.replace("__", "/")
        if key in texts:
            clips.append((f"world/{key}", wav, texts[key]))
    return clips


@torch.inference_mode()
def build_reader_corpus(cfg: ReaderTrainConfig, progress: bool = True, tok: SpeechTokenizer | None = None) -> Path:
    """Encode every training clip (clean, then `augment_copies` augmented variants) into `<out_dir>/units.jsonl`;
    resumes after the last line written. `tok`: `cfg.tokenizer`, when the caller has it loaded already."""
    from emova.train.s2u import _augment_wave, _freq_warp, batch_mels

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = SpeechTokenizer.from_pretrained(cfg.tokenizer) if tok is None else tok
    path = out / "units.jsonl"
    meta_path = out / "units_meta.json"
    meta = {"tokenizer_fingerprint": tok.fingerprint, "augment_copies": cfg.augment_copies,
            "speed_perturb": cfg.speed_perturb, "freq_warp": cfg.freq_warp}
    if path.exists() and meta_path.exists() and json.loads(meta_path.read_text()) != meta:
        raise ValueError(f"{path} was encoded with other settings ({meta_path}); remove {out} or pick another out_dir")
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    done: set[str] = set()
    if path.exists():
        good = []
        for line in path.read_text().splitlines():
            try:
                done.add(json.loads(line)["key"])
                good.append(line)
            except (json.JSONDecodeError, KeyError):
                break  # a line cut by a kill: everything after it is re-encoded
        path.write_text("".join(g + "\n" for g in good))
    clips = _training_clips(cfg)
    jobs = [(f"{key}#{v}", wav, text, v) for key, wav, text in clips for v in range(1 + cfg.augment_copies)]
    jobs = [j for j in jobs if j[0] not in done]
    rng = random.Random(cfg.seed + len(done))
    with path.open("a") as f, tqdm(total=len(jobs), desc="encoding clips for the reader", disable=not progress) as bar:
        for start in range(0, len(jobs), 32):
            batch = jobs[start : start + 32]
            waves = [tok._prepare(Audio.load(wav)).samples for _, wav, _, _ in batch]
            ws = [_augment_wave(w, rng, cfg.speed_perturb if v else 0.0) for w, (_, _, _, v) in zip(waves, batch)]
            mel, lens = batch_mels(ws)
            aug = [b for b, j in enumerate(batch) if j[3]]
            if aug and cfg.freq_warp > 0:
                mel[aug] = _freq_warp(mel[aug], rng, cfg.freq_warp)
            enc = tok.model.encode(mel, lens)
            for b, (key, _, text, _) in enumerate(batch):
                n = int(enc["lengths"][b])
                f.write(json.dumps({"key": key, "text": text, "units": enc["units"][b, :n].tolist()}) + "\n")
            f.flush()
            bar.update(len(batch))
    return path


def _reader_for(cfg: ReaderTrainConfig, tok: SpeechTokenizer) -> UnitReader:
    """A fresh reader of `tok`'s units, shaped by `cfg`."""
    return UnitReader(UnitReaderConfig(fsq_levels=list(tok.config.fsq_levels), dim=cfg.dim, layers=cfg.layers,
                                       heads=cfg.heads, n_phones=VOCAB_SIZE, dropout=cfg.dropout,
                                       tokenizer_fingerprint=tok.fingerprint))


def _start_from_s2u(model: UnitReader, tok: SpeechTokenizer) -> None:
    """Copy the S2U's CTC side (from_code, post, ctc_head) into `model`; the unit embedding starts at zero."""
    s2u = tok.model.cfg
    if (model.cfg.dim, model.cfg.layers, model.cfg.heads, model.cfg.pos_conv_kernel) != (
            s2u.post_dim, s2u.post_layers, s2u.post_heads, s2u.pos_conv_kernel) or model.cfg.n_phones != s2u.n_phones:
        raise ValueError(f"init_from_s2u needs the reader shaped as the S2U's CTC side: dim {s2u.post_dim}, layers "
                         f"{s2u.post_layers}, heads {s2u.post_heads}, {s2u.n_phones} phones")
    model.from_code.load_state_dict(tok.model.from_code.state_dict())
    model.body.load_state_dict(tok.model.post.state_dict())
    model.head.load_state_dict(tok.model.ctc_head.state_dict())
    torch.nn.init.zeros_(model.embed.weight)


def _load_items(path: Path, reduced: bool, exclude: set[str] = frozenset()) -> list[tuple[str, list[int], list[int]]]:
    """(text, units, phone ids) of every encoded clip whose (normalised) text is not in `exclude`, and of its
    reduced units too when `reduced`."""
    from emova.data.world_speech import _norm

    phones: dict[str, list[int]] = {}
    items = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if exclude and _norm(r["text"]) in exclude:
            continue
        if r["text"] not in phones:
            phones[r["text"]] = phones_to_ids(text_to_phones(r["text"]))
        ph = phones[r["text"]]
        forms = [r["units"], SpeechTokenizer.reduce(r["units"])] if reduced else [r["units"]]
        items.extend((r["text"], u, ph) for u in forms if ph and len(ph) <= len(u))
    return items


def _batches(items: list, batch_units: int, rng: random.Random) -> list[list[int]]:
    order = sorted(range(len(items)), key=lambda i: (len(items[i][1]), rng.random()))
    out, cur, longest = [], [], 0
    for i in order:
        n = len(items[i][1])
        if cur and max(longest, n) * (len(cur) + 1) > batch_units:
            out.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        out.append(cur)
    rng.shuffle(out)
    return out


def _ctc_loss(model: UnitReader, items: list, idx: list[int], noise: float, gen: torch.Generator | None):
    lens = torch.tensor([len(items[i][1]) for i in idx])
    units = torch.zeros(len(idx), int(lens.max()), dtype=torch.long)
    for b, i in enumerate(idx):
        units[b, : lens[b]] = torch.tensor(items[i][1])
    pad = torch.arange(units.shape[1])[None] >= lens[:, None]
    if noise > 0:
        swap = torch.rand(units.shape, generator=gen) < noise
        units = torch.where(swap, torch.randint(0, model.codebook_size, units.shape, generator=gen), units)
    logp = model(units, pad).float().log_softmax(-1)
    targets = [torch.tensor(items[i][2]) for i in idx]
    return F.ctc_loss(logp.transpose(0, 1), torch.cat(targets), lens, torch.tensor([len(t) for t in targets]),
                      blank=0, reduction="mean", zero_infinity=True)


def train_reader(cfg: ReaderTrainConfig, progress: bool = True) -> Path:
    """Build the encoded corpus if needed, then train (resuming from the latest checkpoint). Returns the run dir."""
    out = Path(cfg.out_dir)
    tok = SpeechTokenizer.from_pretrained(cfg.tokenizer)
    units_path = build_reader_corpus(cfg, progress, tok)
    exclude: set[str] = set()
    if cfg.heldout_world:
        from emova.data.world_speech import heldout_texts

        if not (Path(cfg.heldout_world) / "heldout").is_dir():
            raise FileNotFoundError(f"no held-out split in {cfg.heldout_world} (heldout_world: the world whose "
                                    "held-out sentences are left out of training; \"\" for none)")
        exclude = heldout_texts(cfg.heldout_world)
    items = _load_items(units_path, cfg.reduced_too, exclude)
    texts = sorted({t for t, _, _ in items})
    rng = random.Random(cfg.seed)
    val_texts = set(rng.sample(texts, int(len(texts) * cfg.val_fraction)))
    train_items = [it for it in items if it[0] not in val_texts]
    val_items = [it for it in items if it[0] in val_texts]
    torch.manual_seed(cfg.seed)
    model = _reader_for(cfg, tok)
    if cfg.init_from_s2u:
        _start_from_s2u(model, tok)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = 0
    ckpt = latest_checkpoint(out)
    if ckpt is not None:
        step = int(load_checkpoint(ckpt, model, opt).get("step", 0))
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    log_path = out / "log.csv"
    new_log = not log_path.exists() or step == 0
    log = log_path.open("w" if new_log else "a", newline="")
    writer = csv.writer(log)
    if new_log:
        writer.writerow(["step", "loss", "val_loss", "lr", "seconds"])
    gen = torch.Generator().manual_seed(cfg.seed + step)
    epoch_rng = random.Random(cfg.seed + step)
    batches: list[list[int]] = []
    t0, running = time.time(), []
    bar = tqdm(total=cfg.max_steps, initial=step, desc="training the unit reader", disable=not progress)
    while step < cfg.max_steps:
        if not batches:
            batches = _batches(train_items, cfg.batch_units, epoch_rng)
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
        if step >= cfg.warmup_steps:
            lr *= 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        loss = _ctc_loss(model, train_items, batches.pop(), cfg.unit_noise, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        running.append(loss.item())
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            val = validation_loss(model, val_items, cfg.batch_units) if val_items and (
                step % (cfg.log_every * 10) == 0 or step == cfg.max_steps) else ""
            writer.writerow([step, sum(running) / len(running), val, lr, round(time.time() - t0, 1)])
            log.flush()
            bar.set_postfix(loss=f"{sum(running) / len(running):.3f}", **({"val": f"{val:.3f}"} if val != "" else {}))
            running = []
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            save_step_checkpoint(out, model, opt, {"step": step}, keep=cfg.keep_checkpoints)
    bar.close()
    log.close()
    plot_log(log_path, ("loss", "val_loss"))
    return out


@torch.inference_mode()
def validation_loss(model: UnitReader, items: list, batch_units: int) -> float:
    model.eval()
    total, n = 0.0, 0
    for idx in _batches(items, batch_units, random.Random(0)):
        total += float(_ctc_loss(model, items, idx, 0.0, None)) * len(idx)
        n += len(idx)
    return total / max(n, 1)


def reader_from_checkpoint(ckpt: str | Path) -> UnitReader:
    """The reader of one training checkpoint (`runs/reader/step-N`), shaped by its run's `train_config.json`."""
    ckpt = Path(ckpt)
    cfg = ReaderTrainConfig(**json.loads((ckpt.parent / "train_config.json").read_text()))
    model = _reader_for(cfg, SpeechTokenizer.from_pretrained(cfg.tokenizer))
    load_checkpoint(ckpt, model)
    return model.eval()


def export_reader(run_dir: str | Path, dest: str | Path) -> Path:
    """The latest checkpoint of `run_dir` as a reader (fp16 safetensors + config) in `dest`, e.g. a tokenizer
    directory."""
    run_dir = Path(run_dir)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"no reader checkpoint in {run_dir}")
    return reader_from_checkpoint(ckpt).save(dest)
