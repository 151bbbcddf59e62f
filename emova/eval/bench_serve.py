"""`emova bench serve`: end-to-end speed of `emova serve` for spoken turns, and its behaviour under load.

1. Starts the server (`emova serve --model M` in a subprocess, so the memory measured is the server's own),
   or uses a running one (`--url`, with `--pid` for its memory).
2. Sequential: N spoken turns (a WAV, optionally with an image), each once streamed (SSE) and once not,
   with audio out. Time to first audio: streamed = the first SSE chunk carrying audio data; non-streamed =
   the whole response (its audio only arrives with it). Also time to first text and total time.
3. Concurrent: C requests at once (audio in, audio out; alternately streamed and not): all must succeed,
   none may return a 5xx; throughput and latency.
4. Memory: the server's RSS sampled throughout, and the kernel's peak (VmHWM).

Writes JSON (default `reports/bench_serve.json`) and prints a table.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emova.argtypes import threads_or_auto
from emova.assets import ASSETS
from emova.audio import Audio

EXAMPLE_WAV = ASSETS / "examples" / "question.wav"
MB = 1024 * 1024


# ------------------------------------------------------------------------------------------ one request
@dataclass
class TurnTiming:
    """One request's outcome. Times in seconds from just before the request was sent."""

    stream: bool
    status: int | None = None  # HTTP status; None when the connection itself failed
    first_text_s: float | None = None
    first_audio_s: float | None = None
    total_s: float | None = None
    audio_bytes: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


def chat_body(wav: bytes, image_png: bytes | None, voice: str, stream: bool, max_tokens: int | None) -> dict:
    content: list[dict[str, Any]] = []
    if image_png is not None:
        content.append({"type": "image_url",
                        "image_url": {"url": "data:image/png;base64," + base64.b64encode(image_png).decode()}})
    content.append({"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}})
    body: dict[str, Any] = {"model": "emova", "modalities": ["text", "audio"], "audio": {"voice": voice, "format": "wav"},
                            "messages": [{"role": "user", "content": content}], "stream": stream}
    if max_tokens:
        body["max_completion_tokens"] = max_tokens
    return body


def send_turn(client: Any, url: str, body: dict, timeout: float) -> TurnTiming:
    """POST one chat completion; for `stream`, read the SSE events as they arrive."""
    import httpx

    turn = TurnTiming(stream=bool(body.get("stream")))
    t0 = time.perf_counter()
    try:
        if not turn.stream:
            r = client.post(f"{url}/v1/chat/completions", json=body, timeout=timeout)
            turn.status = r.status_code
            turn.total_s = turn.first_text_s = time.perf_counter() - t0
            data = r.json()
            if r.status_code != 200:
                turn.error = str(data.get("error", {}).get("message", r.text[:200]))
                return turn
            audio = (data["choices"][0]["message"].get("audio") or {}).get("data")
            if audio:
                turn.first_audio_s = turn.total_s
                turn.audio_bytes = len(base64.b64decode(audio))
            return turn
        with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=timeout) as r:
            turn.status = r.status_code
            if r.status_code != 200:
                turn.error = r.read().decode("utf-8", "replace")[:300]
                return turn
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line[6:]
                if payload == "[DONE]":
                    break
                event = json.loads(payload)
                if "error" in event:
                    turn.error = f"stream error: {event['error'].get('message')}"
                    continue
                delta = event["choices"][0]["delta"]
                now = time.perf_counter() - t0
                if delta.get("content") and turn.first_text_s is None:
                    turn.first_text_s = now
                data = (delta.get("audio") or {}).get("data")
                if data:
                    if turn.first_audio_s is None:
                        turn.first_audio_s = now
                    turn.audio_bytes += len(base64.b64decode(data))
        turn.total_s = time.perf_counter() - t0
    except (httpx.HTTPError, json.JSONDecodeError, KeyError, IndexError) as e:
        turn.error = f"{type(e).__name__}: {e}"
        turn.total_s = time.perf_counter() - t0
    return turn


# ------------------------------------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen | None, log: Path | None, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log else ""
            raise ValueError(f"the server exited with code {proc.returncode} before it was ready:\n{tail.strip()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise ValueError(f"the server at {url} was not healthy within {timeout:g} s")


@contextmanager
def server_process(model: str, port: int | None = None, startup_timeout: float = 300.0,
                   extra_args: list[str] | None = None) -> Iterator[tuple[str, int]]:
    """`emova serve --model MODEL` in a subprocess on a free local port: yields (base url, pid)."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "emova.cli", "serve", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), *(extra_args or [])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="emova-bench-serve-") as tmp:
        log = Path(tmp) / "server.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            _wait_healthy(url, proc, log, startup_timeout)
            yield url, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)


def _proc_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes(pid: int) -> int | None:
    kb = _proc_kb(pid, "VmRSS")
    if kb is not None:
        return kb * 1024
    try:  # not Linux
        import psutil

        return psutil.Process(pid).memory_info().rss
    except Exception:  # noqa: BLE001 — memory is reported when it can be measured
        return None


class RssSampler:
    """Samples a process's RSS in a thread; `peak` is the largest sample, `hwm` the kernel's own peak."""

    def __init__(self, pid: int | None, every_s: float = 0.1) -> None:
        self.pid, self.every_s = pid, every_s
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every_s)

    def sample(self) -> int | None:
        v = rss_bytes(self.pid) if self.pid else None
        if v is not None:
            self.samples.append(v)
        return v

    def __enter__(self) -> RssSampler:
        if self.pid:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.hwm = (_proc_kb(self.pid, "VmHWM") or 0) * 1024 if self.pid else 0

    @property
    def peak(self) -> int | None:
        return max(self.samples) if self.samples else None


# ---------------------------------------------------------------------------------------------- bench
def stats(values: list[float | None]) -> dict[str, float | None]:
    v = np.array([x for x in values if x is not None], dtype=float)
    if not v.size:
        return {"n": 0, "p50": None, "p95": None, "mean": None, "min": None, "max": None}
    return {"n": int(v.size), "p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)),
            "mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}


def _summary(turns: list[TurnTiming]) -> dict[str, Any]:
    return {"requests": len(turns), "ok": sum(t.ok for t in turns),
            "with_audio": sum(t.ok and t.audio_bytes > 0 for t in turns),
            "first_audio_s": stats([t.first_audio_s for t in turns if t.ok]),
            "first_text_s": stats([t.first_text_s for t in turns if t.ok]),
            "total_s": stats([t.total_s for t in turns if t.ok]),
            "errors": sorted({t.error for t in turns if t.error})[:10]}


def _image_png(image: str | None) -> tuple[bytes | None, str | None]:
    """`image`: a file path, "world" (a tiny-world scene rendered here) or None."""
    if image is None:
        return None, None
    if image == "world":
        import random

        from emova.data.world.images import make_image

        img, scene = make_image(random.Random(0))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue(), "tiny-world scene (seed 0)"
    p = Path(image)
    if not p.is_file():
        raise ValueError(f"--image {image}: no such file (give a PNG/JPEG path or 'world')")
    return p.read_bytes(), str(p)


def world_turns(n: int, world: str | Path = "data_cache/world", speech: str | Path = "data_cache/world_speech",
                split: str = "heldout") -> list[tuple[str, str | None]]:
    """`n` spoken turns of the tiny world's `split` as (WAV, image or None): spoken dialogue (no image)
    and spoken questions about images, alternately, in file order."""
    from emova.data.world.formats import records_needing_speech
    from emova.data.world_speech import wav_name

    world, speech = Path(world), Path(speech)
    pools = []
    for task in ("dialogue_speech", "vqa_speech"):
        f = world / split / f"{task}.json"
        if not f.is_file():
            raise ValueError(f"{f}: no such file; generate the world first (emova train recipe tiny --steps world "
                             f"world_speech)")
        pool = []
        for rec in json.loads(f.read_text()):
            asked = [r.key for r in records_needing_speech([rec]) if r.role == "input"]
            wav = speech / split / "wav" / wav_name(asked[0]) if asked else None
            if wav is not None and wav.is_file():
                pool.append((str(wav), str(world / rec["image"]) if rec.get("image") else None))
        if not pool:
            raise ValueError(f"no rendered speech for {task} under {speech / split}; run the world_speech step")
        pools.append(pool)
    return [pools[i % 2][i // 2 % len(pools[i % 2])] for i in range(n)]


def run_bench(url: str, pid: int | None = None, n: int = 10, concurrency: int = 20, audio: str | Path = EXAMPLE_WAV,
              image: str | None = None, voice: str = "female", max_tokens: int | None = None,
              timeout: float = 600.0, warmup: int = 2, turns: list[tuple[str, str | None]] | None = None) -> dict[str, Any]:
    """Benchmark a running server at `url` (`pid`: its process, for memory). Returns the report dict.
    `turns` [(WAV, image or None), …] replaces audio/image: the sequential and concurrent phases cycle
    through them (each turn is sent streamed and non-streamed, back to back)."""
    import httpx

    if n < 1 or concurrency < 1:
        raise ValueError("n and concurrency must be at least 1")
    turns = turns or [(str(audio), image)]
    bodies, described = [], []
    for wav_path, img in turns:
        clip = Audio.load(wav_path)  # a clear error for a bad file before any request
        png, image_desc = _image_png(img)
        wav = Path(wav_path).read_bytes()
        bodies.append({s: chat_body(wav, png, voice, s, max_tokens) for s in (True, False)})
        described.append({"audio": str(wav_path), "audio_s": round(clip.duration, 3), "image": image_desc})
    report: dict[str, Any] = {
        "url": url, "inputs": {**described[0], "voice": voice, "max_tokens": max_tokens, "turns": len(turns)},
        "n": n, "concurrency": concurrency,
    }
    if len(turns) > 1:
        report["inputs"]["turn_list"] = described
    with RssSampler(pid) as mem, httpx.Client() as client:
        rss_start = mem.sample()
        for i in range(warmup):  # first-call costs (allocations, lazy imports) are not what we measure
            send_turn(client, url, bodies[0][i % 2 == 0], timeout)
        seq: dict[bool, list[TurnTiming]] = {True: [], False: []}
        for i in range(n):
            for s in (True, False):
                seq[s].append(send_turn(client, url, bodies[i % len(bodies)][s], timeout))
        rss_seq = mem.sample()

        gate = threading.Barrier(concurrency)

        def one(i: int) -> TurnTiming:
            with httpx.Client() as c:
                gate.wait(timeout=60)
                return send_turn(c, url, bodies[i % len(bodies)][i % 2 == 0], timeout)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            burst = list(pool.map(one, range(concurrency)))
        wall = time.perf_counter() - t0
        rss_end = mem.sample()
    streamed, plain = _summary(seq[True]), _summary(seq[False])
    report["sequential"] = {"streamed": streamed, "non_streamed": plain}
    s50, p50 = streamed["first_audio_s"]["p50"], plain["first_audio_s"]["p50"]
    report["ttfa_speedup_p50"] = (p50 / s50) if s50 and p50 else None
    pairs = [b.first_audio_s / a.first_audio_s for a, b in zip(seq[True], seq[False])
             if a.ok and b.ok and a.first_audio_s and b.first_audio_s]
    report["ttfa_speedup_per_turn"] = stats(pairs)  # the same turn, streamed vs not, back to back
    statuses: dict[str, int] = {}
    for t in burst:
        statuses[str(t.status)] = statuses.get(str(t.status), 0) + 1
    report["concurrent"] = {
        **_summary(burst), "status_counts": statuses,
        "server_errors_5xx": sum(t.status is not None and t.status >= 500 for t in burst),
        "stream_errors": sum(bool(t.error and t.error.startswith("stream error")) for t in burst),
        "connection_errors": sum(t.status is None for t in burst),
        "wall_s": wall, "throughput_rps": concurrency / wall if wall > 0 else None,
        "turns": [asdict(t) for t in burst],
    }
    report["memory"] = {
        "pid": pid, "rss_start_mb": _mb(rss_start), "rss_after_sequential_mb": _mb(rss_seq),
        "rss_end_mb": _mb(rss_end), "peak_rss_sampled_mb": _mb(mem.peak),
        "peak_rss_mb": _mb(getattr(mem, "hwm", None) or mem.peak),
    }
    c = report["concurrent"]
    report["checks"] = {
        "ttfa_p50_le_1s": s50 is not None and s50 <= 1.0,
        "streamed_first_audio_2x_earlier": bool(report["ttfa_speedup_p50"] and report["ttfa_speedup_p50"] >= 2.0),
        "concurrent_all_ok": c["ok"] == concurrency,
        "concurrent_all_audio": c["with_audio"] == concurrency,
        "no_5xx": c["server_errors_5xx"] == 0 and c["stream_errors"] == 0,
    }
    return report


def _mb(x: int | None) -> float | None:
    return None if x is None else round(x / MB, 1)


def bench_serve(model: str = "emova-tiny", url: str | None = None, pid: int | None = None, n: int = 10,
                concurrency: int = 20, audio: str | Path = EXAMPLE_WAV, image: str | None = None,
                voice: str = "female", max_tokens: int | None = None, out: str | Path | None = "reports/bench_serve.json",
                port: int | None = None, startup_timeout: float = 300.0, timeout: float = 600.0,
                quiet: bool = False, turns: list[tuple[str, str | None]] | None = None,
                server_threads: int | str | None = None) -> dict[str, Any]:
    """Start `emova serve --model MODEL` (unless `url` is given; `server_threads` → its `--threads`, default
    the server's own "auto"), run the bench, write `out`, print a table."""
    for wav_path, img in turns or [(str(audio), image)]:
        Audio.load(wav_path)  # bad inputs fail here, before a server is started
        _image_png(img)
    if url is None:
        t0 = time.perf_counter()
        extra = [] if server_threads is None else ["--threads", str(server_threads)]
        with server_process(model, port, startup_timeout, extra) as (base, server_pid):
            startup = time.perf_counter() - t0
            report = run_bench(base, server_pid, n, concurrency, audio, image, voice, max_tokens, timeout,
                               turns=turns)
        report["server"] = {"mode": "subprocess", "model": str(model), "startup_s": round(startup, 2),
                            "threads": "auto" if server_threads is None else str(server_threads)}
    else:
        report = run_bench(url.rstrip("/"), pid, n, concurrency, audio, image, voice, max_tokens, timeout,
                           turns=turns)
        report["server"] = {"mode": "external", "model": str(model) if model else None}
    report["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
        report["out"] = str(out)
    if not quiet:
        print(format_table(report))
    return report


def format_table(r: dict[str, Any]) -> str:
    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    many = r["inputs"].get("turns", 1) > 1
    what = (f"{r['inputs']['turns']} held-out spoken turns, cycled" if many else
            f"{r['inputs']['audio_s']} s audio" + (" + image" if r["inputs"]["image"] else ""))
    rows = [f"emova bench serve — {r['server'].get('model')} at {r['url']} ({r['server']['mode']} server); "
            f"input {what}",
            "", f"{'sequential (' + str(r['n']) + ' turns)':<26}{'ok':>6}{'audio':>7}{'TTFA p50':>10}{'TTFA p95':>10}"
            f"{'total p50':>11}{'total p95':>11}"]
    for name, key in (("streamed (SSE)", "streamed"), ("non-streamed", "non_streamed")):
        s = r["sequential"][key]
        rows.append(f"{name:<26}{s['ok']:>6}{s['with_audio']:>7}{f(s['first_audio_s']['p50']):>10}"
                    f"{f(s['first_audio_s']['p95']):>10}{f(s['total_s']['p50']):>11}{f(s['total_s']['p95']):>11}")
    c, m = r["concurrent"], r["memory"]
    per = r.get("ttfa_speedup_per_turn") or {}
    rows += [f"first audio, streamed vs not (p50): {f(r['ttfa_speedup_p50'])}x earlier; per turn, same input: "
             f"p50 {f(per.get('p50'))}x, min {f(per.get('min'))}x", "",
             f"concurrent: {c['requests']} requests, {c['ok']} ok, {c['with_audio']} with audio, "
             f"{c['server_errors_5xx']} 5xx, {c['stream_errors']} stream errors, statuses {c['status_counts']}; "
             f"wall {c['wall_s']:.2f} s, {f(c['throughput_rps'])} req/s, latency p50 {f(c['total_s']['p50'])} "
             f"p95 {f(c['total_s']['p95'])} s",
             f"server memory: RSS start {m['rss_start_mb']} MB, after sequential {m['rss_after_sequential_mb']} MB, "
             f"end {m['rss_end_mb']} MB, peak {m['peak_rss_mb']} MB",
             "checks: " + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in r["checks"].items())]
    if r.get("out"):
        rows.append(f"written: {r['out']}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    """`python -m emova.eval.bench_serve` (what `emova bench serve` runs)."""
    p = argparse.ArgumentParser(prog="emova bench serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="emova-tiny", help="bundled name or model directory for the server")
    p.add_argument("--url", default=None, help="bench a server that is already running (no subprocess)")
    p.add_argument("--pid", type=int, default=None, help="with --url: the server's process id, for its memory")
    p.add_argument("-n", "--n", type=int, default=10, help="sequential spoken turns (each streamed and not)")
    p.add_argument("-c", "--concurrency", type=int, default=20, help="concurrent requests")
    p.add_argument("--audio", default=str(EXAMPLE_WAV), help="the spoken question (WAV)")
    p.add_argument("--image", default=None, help="an image to ask about: a PNG/JPEG path, or 'world' for a tiny-world scene")
    p.add_argument("--voice", default="female", choices=["female", "male"])
    p.add_argument("--max-tokens", type=int, default=None, help="cap on generated tokens per turn")
    p.add_argument("--port", type=int, default=None, help="port for the server subprocess (default: a free one)")
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout (s)")
    p.add_argument("--out", default="reports/bench_serve.json")
    p.add_argument("--world-turns", type=int, default=None, metavar="K",
                   help="instead of --audio/--image: cycle through K held-out spoken turns of the tiny world "
                        "(dialogue and questions about images, from data_cache/world and data_cache/world_speech)")
    p.add_argument("--server-threads", type=threads_or_auto, default=None, metavar="N|auto",
                   help="the server subprocess's --threads (default: the server's own auto)")
    a = p.parse_args(argv)
    turns = world_turns(a.world_turns) if a.world_turns else None
    bench_serve(a.model, a.url, a.pid, a.n, a.concurrency, a.audio, a.image, a.voice, a.max_tokens, a.out, a.port,
                a.startup_timeout, a.timeout, turns=turns, server_threads=a.server_threads)


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = ["TurnTiming", "bench_serve", "world_turns", "format_table", "run_bench", "send_turn", "server_process", "main"]
