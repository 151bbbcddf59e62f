"""The `emova` command line. Every command calls the same library objects the Python API exposes."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from emova.argtypes import positive_float, positive_int, threads_or_auto
from emova.assets import ASSETS

EXAMPLES = ASSETS / "examples"


def _cmd_speech_encode(a: argparse.Namespace) -> None:
    from emova.speech.tokenizer import SpeechTokenizer

    tok = SpeechTokenizer.from_pretrained(a.model)
    units = tok.encode(a.wav)
    if a.reduce:
        units = tok.reduce(units)
    print(json.dumps({"units": units}) if a.json else tok.units_to_string(units))


def units_argument(value: str) -> str | list[int]:
    """`--units` of `emova speech decode`: a `<|speech_N|>…` string, integers separated by spaces or commas, a
    JSON list, or `@FILE` holding any of these or `emova speech encode --json` output ({"units": [...]})."""
    if value.startswith("@"):
        path = Path(value[1:])
        if not path.is_file():
            raise ValueError(f"--units {value}: no such file")
        try:
            value = path.read_text()
        except UnicodeDecodeError:
            raise ValueError(f"--units {value}: not a text file") from None
    text = value.strip()
    if text.startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--units: not valid JSON: {e}") from None
        if isinstance(data, dict):
            data = data.get("units")
        if not isinstance(data, list):
            raise ValueError('--units: JSON must be a list of units or {"units": [...]}')
        return data
    if text and re.fullmatch(r"[\d\s,]+", text):
        return [int(t) for t in re.split(r"[\s,]+", text) if t]
    if "<|speech_" not in text:
        raise ValueError(f"--units: expected '<|speech_N|>…', integers ('1 2 3' or '1,2,3'), a JSON list or @FILE; "
                         f"got {text[:40]!r}")
    return text


def _cmd_speech_decode(a: argparse.Namespace) -> None:
    from emova.speech.detokenizer import decode_to_file

    print(decode_to_file(units_argument(a.units), a.style, a.out, a.model, a.reference))


def _cmd_data_speech(a: argparse.Namespace) -> None:
    from emova.data.speech.corpus import CorpusConfig, render_corpus

    cfg = CorpusConfig(n_train_sentences=a.n_sentences, seed=a.seed, fsdd_dir=a.fsdd)
    print(render_corpus(a.out, cfg, workers=a.workers))


def _cmd_data_fsdd_augment(a: argparse.Namespace) -> None:
    """Augmented ASR records of the speech corpus' FSDD recordings (an experiment's data: docs/training.md)."""
    from emova.data.speech.wave_augment import WaveAugment
    from emova.data.world.formats import save_records
    from emova.data.world_speech import fsdd_asr_records
    from emova.speech.tokenizer import SpeechTokenizer
    from emova.yaml_io import read_yaml_mapping

    if a.copies < 1:
        raise ValueError(f"--copies must be at least 1, got {a.copies}")
    aug = WaveAugment.from_dict(read_yaml_mapping(a.augment) if a.augment else None)
    out = Path(a.out)
    if out.exists() and not a.overwrite:
        raise ValueError(f"{out} exists (pass --overwrite to replace it)")
    recs = fsdd_asr_records(a.corpus, a.split, SpeechTokenizer.from_pretrained(a.tokenizer), copies=a.copies,
                            augment=aug, seed=a.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_records(out, recs)
    print(f"{len(recs)} augmented FSDD ASR records ({a.split}, {a.copies} per recording) → {out}")


def _cmd_train_s2u(a: argparse.Namespace) -> None:
    from emova.speech.s2u import S2UModel
    from emova.speech.tokenizer import SpeechTokenizer
    from emova.train.checkpoint import load_checkpoint
    from emova.train.s2u import S2UTrainConfig, train_s2u

    cfg = S2UTrainConfig.load(a.config, corpus=a.corpus, out_dir=a.out, max_steps=a.max_steps)
    run = train_s2u(cfg)
    if a.export:
        model = S2UModel(cfg.model_config())
        load_checkpoint(run / "final", model)
        print("exported to", SpeechTokenizer(model).save_pretrained(a.export))


def _cmd_train_s2u_anchor(a: argparse.Namespace) -> None:
    from emova.data.speech.anchor import render_anchor_corpus
    from emova.speech.tokenizer import SpeechTokenizer
    from emova.train.s2u import export_s2u
    from emova.train.s2u_anchor import S2UAnchorConfig, train_s2u_anchor

    cfg = S2UAnchorConfig.load(a.config, corpus=a.corpus, init=a.init, out_dir=a.out, max_steps=a.max_steps)
    teacher = SpeechTokenizer.from_pretrained(cfg.init).model  # a bad teacher is named before anything is rendered
    if cfg.target == "anchor":
        render_anchor_corpus(cfg.corpus, cfg.anchor_corpus, tuple(cfg.splits))
    run = train_s2u_anchor(cfg, teacher=teacher)
    if a.export:
        print("exported to", export_s2u(run / "final", a.export))


def _cmd_train_reader(a: argparse.Namespace) -> None:
    from emova.train.reader import ReaderTrainConfig, export_reader, train_reader

    cfg = ReaderTrainConfig.load(a.config, tokenizer=a.tokenizer, out_dir=a.out, max_steps=a.max_steps)
    run = train_reader(cfg)
    if a.export:
        print("exported to", export_reader(run, a.export))


def _cmd_train_stage(a: argparse.Namespace) -> None:
    if a.stage is None:
        raise ValueError("`emova train` needs --stage 1|2|3 (with --config) or a subcommand: s2u, s2u-anchor, reader, u2s, vision, recipe, average")
    from emova.train.omni import train_stage_cli

    print(train_stage_cli(a.stage, a.stage_config, a.overrides))


def _cmd_train_average(a: argparse.Namespace) -> None:
    from emova.train.average import average_checkpoints

    print(json.dumps(average_checkpoints(a.checkpoints, a.out, a.weights), indent=1))


def _cmd_train_recipe(a: argparse.Namespace) -> None:
    from emova.train.recipe import run_recipe

    print(json.dumps(run_recipe(a.name, a.work_dir, a.runs_dir, a.assets_dir, a.fsdd, a.steps, a.force), indent=1))


def _cmd_eval_omni(a: argparse.Namespace) -> None:
    from emova.eval.omni import evaluate_omni

    evaluate_omni(model_dir=a.model, world_dir=a.world, image_root=a.images, detokenizer=a.detokenizer, out=a.out,
                  suites=a.suites, max_items=a.max_items,
                  speech_tokenizer=None if a.speech_tokenizer == "none" else a.speech_tokenizer)


def _cmd_eval_s2u(a: argparse.Namespace) -> None:
    from emova.eval.s2u import run_eval_s2u

    run_eval_s2u(a.model, a.corpus, a.out, a.max_items)


def _cmd_bench_s2u(a: argparse.Namespace) -> None:
    from emova.eval.bench import bench_s2u

    bench_s2u(a.model, a.threads, a.seconds, a.repeats, a.out)


def _cmd_demo(a: argparse.Namespace) -> None:
    """The bundled model on the bundled example. With the omni LLM bundled: a spoken question about an
    image, answered in text + speech. Until then: the speech path alone (speech → units → speech in
    another style), so a fresh install still exercises every trained component."""
    from emova.assets import BUNDLED

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    wav, image = EXAMPLES / "question.wav", EXAMPLES / "image.png"
    if (BUNDLED["emova-tiny"] / "llm").is_dir():
        m = _load_emova("emova-tiny")
        content = ([{"type": "image", "image": str(image)}] if image.exists() else []) + [{"type": "audio", "audio": str(wav)}]
        r = m.chat([{"role": "user", "content": content}], voice="female")
        result = r.to_dict()
        if r.audio is not None:
            r.audio.save(out / "reply.wav")
    else:
        from emova.speech.detokenizer import SpeechDetokenizer
        from emova.speech.tokenizer import SpeechTokenizer
        from emova.styles import Style

        tok = SpeechTokenizer.from_pretrained("emova-tiny")
        detok = SpeechDetokenizer.from_pretrained("emova-tiny")
        units = tok.reduce(tok.encode(wav))
        style = Style(gender="female", emotion="happy", pitch="high")
        reply = detok.decode(units, style=style)
        reply.save(out / "reply.wav")
        result = {"mode": "speech round trip (the omni LLM is not bundled yet)", "input": str(wav),
                  "recognised_phones": " ".join(tok.recognize_phones(wav)), "reduced_units": len(units),
                  "unit_string": tok.units_to_string(units), "reply_style": str(style),
                  "reply_seconds": round(reply.duration, 2)}
    result["reply_wav"] = str(out / "reply.wav")
    (out / "demo.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


def _load_emova(model: str):
    from emova.inference.pipeline import Emova

    return Emova.from_pretrained(model)


def _chat_messages(a: argparse.Namespace, text: str | None) -> list[dict]:
    content: list[dict] = []
    if a.image:
        content.append({"type": "image", "image": a.image})
    if a.audio:
        content.append({"type": "audio", "audio": a.audio})
    if text:
        content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


_QUIT = {"exit", "quit", "/exit", "/quit", ":q"}


def _typed_turn() -> str | None:
    """The next typed turn of `emova chat --interactive` (blank lines skipped); None at EOF or a quit word."""
    while True:
        try:
            text = input("> ").strip()
        except EOFError:
            return None
        if text.lower() in _QUIT:
            return None
        if text:
            return text


def _cmd_chat(a: argparse.Namespace) -> None:
    if not (a.audio or a.text or a.interactive):
        raise ValueError("emova chat needs --audio WAV or --text T (or --interactive)")
    if a.out:
        from emova.audio import check_audio_path  # here, not at the top: `emova --help` need not import torch

        check_audio_path(a.out)
    m = _load_emova(a.model)
    override = {k: v for k, v in {"emotion": a.emotion, "pitch": a.pitch, "speed": a.speed}.items() if v} or None
    history: list[dict] = []
    text = a.text
    while True:
        if a.interactive and not (text or a.audio):
            text = _typed_turn()
            if text is None:
                return
        msgs = history + _chat_messages(a, text)
        try:
            r = m.chat(msgs, voice=a.voice, style_override=override)
        except ValueError as e:
            if not a.interactive or a.image or a.audio:  # the command's own inputs are wrong: stop
                raise
            print(f"emova: error: {e}", file=sys.stderr)  # a typed turn the model refused: the session goes on
            text = None
            continue
        if r.audio is not None and a.out:
            r.audio.save(a.out)
        if a.json:
            print(json.dumps(r.to_dict(), indent=1))
        else:
            if r.transcript:
                print(f"you said: {r.transcript}  [{r.user_emotion}, {r.user_pitch}]")
            print(f"emova: {r.text}  [{r.emotion}, {r.pitch}]" + (f"  → {a.out}" if r.audio is not None and a.out else ""))
        if not a.interactive:
            return
        history = msgs + [r.as_message()]
        a.image = a.audio = text = None  # the image opens the first turn only


def _cmd_asr(a: argparse.Namespace) -> None:
    print(_load_emova(a.model).transcribe(a.wav))


def _cmd_tts(a: argparse.Namespace) -> None:
    from emova.audio import check_audio_path

    check_audio_path(a.out)
    audio = _load_emova(a.model).synthesize(a.text, style=a.style)
    print(audio.save(a.out))


def _cmd_serve(a: argparse.Namespace) -> None:
    from emova.serve.api import serve

    serve(a.model, a.host, a.port, device=a.device, threads=a.threads, max_body_bytes=a.max_body_bytes,
          max_audio_seconds=a.max_audio_seconds, max_image_pixels=a.max_image_pixels)


def _cmd_web(a: argparse.Namespace) -> None:
    from emova.serve.web import launch_web

    launch_web(a.model, a.host, a.port, device=a.device, share=a.share, threads=a.threads)


def _cmd_convert(a: argparse.Namespace) -> None:
    from emova.convert.model import convert_checkpoint

    print(convert_checkpoint(a.src, a.dst, to=a.to))


def _server_parser(sub: argparse._SubParsersAction, name: str, help: str, port: int) -> argparse.ArgumentParser:
    """A subcommand that serves a model on a local port (`serve`, `web`): their common flags."""
    s = sub.add_parser(name, help=help)
    s.add_argument("--model", default="emova-tiny")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=port)
    s.add_argument("--device", default="cpu")
    s.add_argument("--threads", type=threads_or_auto, default="auto",
                   help="torch intra-op threads for the model (default auto: OMP_NUM_THREADS if set, else the usable "
                        "cores minus one, at least 1)")
    return s


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emova", description="EMOVA: see, hear and speak with emotions")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the bundled tiny model on bundled example inputs")
    d.add_argument("--out", default="demo_out")
    d.set_defaults(func=_cmd_demo)

    c = sub.add_parser("chat", help="talk to emova: image + (audio | text) → text + speech")
    c.add_argument("--image", default=None)
    c.add_argument("--audio", default=None)
    c.add_argument("--text", default=None)
    c.add_argument("--voice", default="female", choices=["female", "male"])
    c.add_argument("--emotion", default=None, help="override the reply emotion")
    c.add_argument("--pitch", default=None, choices=["low", "normal", "high"])
    c.add_argument("--speed", default=None, choices=["slow", "normal", "fast"])
    c.add_argument("--out", default="reply.wav")
    c.add_argument("--json", action="store_true")
    c.add_argument("--interactive", action="store_true", help="keep the conversation going (typed turns)")
    c.add_argument("--model", default="emova-tiny")
    c.set_defaults(func=_cmd_chat)

    asr = sub.add_parser("asr", help="speech → text through the LLM (ASR prompt)")
    asr.add_argument("wav")
    asr.add_argument("--model", default="emova-tiny")
    asr.set_defaults(func=_cmd_asr)

    tts = sub.add_parser("tts", help="text → speech through the LLM (TTS prompt → units → U2S)")
    tts.add_argument("text")
    tts.add_argument("--style", default="gender-female_emotion-neutral_speed-normal_pitch-normal")
    tts.add_argument("--out", required=True)
    tts.add_argument("--model", default="emova-tiny")
    tts.set_defaults(func=_cmd_tts)

    sp = sub.add_parser("speech", help="speech tokenizer / detokenizer").add_subparsers(dest="speech_cmd", required=True)
    e = sp.add_parser("encode", help="speech → units")
    e.add_argument("wav")
    e.add_argument("--reduce", action="store_true", help="remove consecutive duplicate units")
    e.add_argument("--json", action="store_true", help="print a JSON list instead of the unit string")
    e.add_argument("--model", default="emova-tiny")
    e.set_defaults(func=_cmd_speech_encode)

    dd = sp.add_parser("decode", help="units → speech in a style (or a reference clip's voice)")
    dd.add_argument("--units", required=True,
                    help="'<|speech_1|><|speech_2|>…', '1 2 3' / '1,2,3', a JSON list, or @FILE (any of these, or "
                         "the output of `emova speech encode --json`)")
    dd.add_argument("--style", default="gender-female_emotion-neutral_speed-normal_pitch-normal")
    dd.add_argument("--reference", default=None, help="take voice and style from this clip instead")
    dd.add_argument("--out", required=True)
    dd.add_argument("--model", default="emova-tiny")
    dd.set_defaults(func=_cmd_speech_decode)

    data = sub.add_parser("data", help="generate training data").add_subparsers(dest="data_cmd", required=True)
    ds = data.add_parser("speech", help="render the speech corpus (resumable)")
    ds.add_argument("--out", default="data_cache/speech")
    ds.add_argument("--n-sentences", type=int, default=7000)
    ds.add_argument("--seed", type=int, default=1234)
    ds.add_argument("--fsdd", default=None, help="FSDD directory (training split) to include")
    ds.add_argument("--workers", type=int, default=2)
    ds.set_defaults(func=_cmd_data_speech)
    fa = data.add_parser("fsdd-augment", help="augmented copies of the corpus' FSDD recordings as ASR records "
                                               "(speed, PSOLA pitch/tempo, noise)")
    fa.add_argument("--corpus", default="data_cache/speech", help="speech corpus rendered with --fsdd")
    fa.add_argument("--split", default="fsdd_train", choices=["fsdd_train"],
                    help="only the training recordings: validation and test stay held out")
    fa.add_argument("--tokenizer", default="emova-tiny", help="speech tokenizer (bundled name or directory)")
    fa.add_argument("--copies", type=int, default=8)
    fa.add_argument("--seed", type=int, default=0)
    fa.add_argument("--augment", default=None, help="YAML of WaveAugment ranges (speed, pitch, tempo, noise_snr_db, p_*)")
    fa.add_argument("--out", default="data_cache/world_units_canonical_kal16/train/fsdd_asr_aug.json")
    fa.add_argument("--overwrite", action="store_true")
    fa.set_defaults(func=_cmd_data_fsdd_augment)

    trp = sub.add_parser("train", help="training: `--stage 1|2|3 --config C`, or a subcommand (s2u, s2u-anchor, reader, u2s, vision, recipe, average)")
    trp.add_argument("--stage", type=int, choices=[1, 2, 3], default=None, help="EMOVA training stage of the omni model")
    trp.add_argument("--config", dest="stage_config", default=None, help="stage config (YAML path or a name in emova/configs/train)")
    trp.add_argument("--set", dest="overrides", nargs="*", default=None, metavar="KEY=VALUE", help="config overrides")
    trp.set_defaults(func=_cmd_train_stage)
    tr = trp.add_subparsers(dest="train_cmd", required=False)
    rc = tr.add_parser("recipe", help="regenerate a bundled model from a clean checkout (cached steps)")
    rc.add_argument("name", choices=["tiny"])
    rc.add_argument("--work-dir", default="data_cache")
    rc.add_argument("--runs-dir", default="runs")
    rc.add_argument("--assets-dir", default=None)
    rc.add_argument("--fsdd", default=None)
    rc.add_argument("--steps", nargs="*", default=None)
    rc.add_argument("--force", nargs="*", default=None)
    rc.set_defaults(func=_cmd_train_recipe)
    av = tr.add_parser("average", help="average the weights of checkpoints of one model (e.g. the last legs of a stage)")
    av.add_argument("checkpoints", nargs="+", help="save_pretrained directories (at least two)")
    av.add_argument("--out", required=True, help="directory for the averaged checkpoint (fp32)")
    av.add_argument("--weights", nargs="*", type=float, default=None, help="one per checkpoint (default: equal)")
    av.set_defaults(func=_cmd_train_average)
    ts = tr.add_parser("s2u", help="train the speech tokenizer (resumes from the latest checkpoint)")
    ts.add_argument("--config", default=str(Path(__file__).parent / "configs" / "s2u_tiny.yaml"))
    ts.add_argument("--corpus", default=None)
    ts.add_argument("--out", default=None)
    ts.add_argument("--max-steps", type=int, default=None)
    ts.add_argument("--export", default=None, help="write the trained tokenizer to this directory")
    ts.set_defaults(func=_cmd_train_s2u)
    ta = tr.add_parser("s2u-anchor", help="fine-tune a speech tokenizer to hear every voice in one anchor voice's "
                                          "units (renders the anchor corpus first; resumes)")
    ta.add_argument("--config", default=str(Path(__file__).parent / "configs" / "s2u_anchor.yaml"))
    ta.add_argument("--corpus", default=None)
    ta.add_argument("--init", default=None, help="the tokenizer to start from (name or directory)")
    ta.add_argument("--out", default=None)
    ta.add_argument("--max-steps", type=positive_int, default=None)
    ta.add_argument("--export", default=None, help="write the fine-tuned tokenizer to this directory")
    ta.set_defaults(func=_cmd_train_s2u_anchor)

    tp = tr.add_parser("reader", help="train the unit reader that scores transcripts against the units (encodes the "
                                      "training speech with the tokenizer first; resumes)")
    tp.add_argument("--config", default=str(Path(__file__).parent / "configs" / "reader_tiny.yaml"))
    tp.add_argument("--tokenizer", default=None, help="whose units it reads (name or directory)")
    tp.add_argument("--out", default=None)
    tp.add_argument("--max-steps", type=positive_int, default=None)
    tp.add_argument("--export", default=None, help="write the reader into this directory (the tokenizer's, to use it)")
    tp.set_defaults(func=_cmd_train_reader)

    tu = tr.add_parser("u2s", help="train the speech detokenizer (args: see `python -m emova.train.u2s --help`)",
                       add_help=False)
    tu.add_argument("rest", nargs=argparse.REMAINDER)
    tu.set_defaults(func=None)  # dispatched in main()
    tv = tr.add_parser("vision", help="pretrain the vision tower before stage 1 (args: `emova train vision --help`)",
                       add_help=False)
    tv.add_argument("rest", nargs=argparse.REMAINDER)
    tv.set_defaults(func=None)  # dispatched in main()

    ev = sub.add_parser("eval", help="evaluation suites").add_subparsers(dest="eval_cmd", required=True)
    es = ev.add_parser("s2u", help="speech tokenizer: PER, style invariance, probes, usage")
    es.add_argument("--model", default="emova-tiny")
    es.add_argument("--corpus", default="data_cache/speech")
    es.add_argument("--out", default="reports/eval_s2u.json")
    es.add_argument("--max-items", type=positive_int, default=None)
    es.set_defaults(func=_cmd_eval_s2u)

    eu = ev.add_parser("u2s", help="speech detokenizer: intelligibility, style control, streaming", add_help=False)
    eu.add_argument("rest", nargs=argparse.REMAINDER)
    eu.set_defaults(func=None)  # dispatched in main()

    eo = ev.add_parser("omni", help="omni model: VQA, ASR, TTS, spoken dialogue, text (held-out world)")
    eo.add_argument("--model", default="emova-tiny")
    eo.add_argument("--world", default="data_cache/world_units")
    eo.add_argument("--images", default="data_cache/world")
    eo.add_argument("--detokenizer", default="emova-tiny")
    eo.add_argument("--speech-tokenizer", default="emova-tiny",
                    help="its phone reader rescores the ASR/FSDD transcripts as Emova.transcribe does; 'none': greedy only")
    eo.add_argument("--out", default="reports/eval_omni.json")
    eo.add_argument("--suites", nargs="*", default=None)
    eo.add_argument("--max-items", type=positive_int, default=None)
    eo.set_defaults(func=_cmd_eval_omni)

    be = sub.add_parser("bench", help="speed benchmarks").add_subparsers(dest="bench_cmd", required=True)
    bs = be.add_parser("s2u", help="speech tokenizer real-time factor")
    bs.add_argument("--model", default="emova-tiny")
    bs.add_argument("--threads", type=positive_int, default=2)
    bs.add_argument("--seconds", type=positive_float, default=10.0)
    bs.add_argument("--repeats", type=positive_int, default=5)
    bs.add_argument("--out", default="reports/bench_s2u.json")
    bs.set_defaults(func=_cmd_bench_s2u)
    sv = _server_parser(sub, "serve", "OpenAI-compatible HTTP API (chat with audio, speech, transcriptions)", 8000)
    sv.add_argument("--max-body-bytes", type=int, default=25_000_000)
    sv.add_argument("--max-audio-seconds", type=float, default=120)
    sv.add_argument("--max-image-pixels", type=int, default=4096 * 4096)
    sv.set_defaults(func=_cmd_serve)

    wb = _server_parser(sub, "web", "web UI (Gradio): talk to emova from a browser", 7860)
    wb.add_argument("--share", action="store_true", help="ask Gradio for a public share link (needs internet)")
    wb.set_defaults(func=_cmd_web)

    cv = sub.add_parser("convert", help="convert model checkpoints between the official layouts and ours")
    cv.add_argument("src", help="checkpoint directory (official HF, official training layout, or ours)")
    cv.add_argument("dst", help="output directory")
    cv.add_argument("--to", default="emova", choices=["emova", "official-hf", "official-train"])
    cv.set_defaults(func=_cmd_convert)
    bu = be.add_parser("u2s", help="speech detokenizer real-time factor", add_help=False)
    bu.add_argument("rest", nargs=argparse.REMAINDER)
    bu.set_defaults(func=None)  # dispatched in main()
    bsv = be.add_parser("serve", help="HTTP server: time to first audio (streamed vs not), concurrency, peak RSS",
                        add_help=False)
    bsv.add_argument("rest", nargs=argparse.REMAINDER)
    bsv.set_defaults(func=None)  # dispatched in main()
    return p


_DELEGATED = {("train", "u2s"): "emova.train.u2s", ("train", "vision"): "emova.train.vision_pretrain",
              ("eval", "u2s"): "emova.eval.u2s", ("bench", "u2s"): "emova.eval.bench_u2s",
              ("bench", "serve"): "emova.eval.bench_serve"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if tuple(argv[:2]) in _DELEGATED:  # their parsers own every flag, --help included
        import importlib

        try:
            importlib.import_module(_DELEGATED[tuple(argv[:2])]).main(argv[2:])
        except ValueError as e:
            print(f"emova: error: {e}", file=sys.stderr)
            return 2
        return 0
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as e:  # bad input: one clear line, no traceback
        print(f"emova: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from emova.inference.pipeline import GenerationError

        if isinstance(e, GenerationError):
            print(f"emova: generation failed: {e}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
