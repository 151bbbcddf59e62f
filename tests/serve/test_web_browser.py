"""`emova web` in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright; no browser is
downloaded): upload a WAV and an image, press Send, and the page shows the transcript and the reply text and
holds a playable <audio> whose length is that of the reply the model made. A non-audio upload then gives an
error message on the page, and the page keeps working; a clip recorded from (Chromium's fake) microphone is
answered too. Requests leaving 127.0.0.1 are blocked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from emova.eval.bench_serve import free_port
from emova.model.prompts import format_answer
from emova.serve.web import create_web
from tests.inference.conftest import Feed, emova, image, ours_dir, speech  # noqa: F401 — fixtures
from tests.serve.test_api import ANSWER

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 30_000

if not Path(CHROMIUM).exists() and not os.environ.get("CI"):  # CI must have it (make apt installs it)
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium, or `make apt`)", allow_module_level=True)


@pytest.fixture(scope="module")
def web(emova):  # noqa: F811
    """The Gradio app on a free local port (server thread); the model answers the fixed dialogue JSON."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    mp = pytest.MonkeyPatch()
    mp.setattr(emova, "_tokens", Feed(emova, format_answer(ANSWER)))  # every generation: this answer
    results = []
    chat = emova.chat

    def recording_chat(*a, **kw):
        r = chat(*a, **kw)
        results.append(r)
        return r

    mp.setattr(emova, "chat", recording_chat)
    demo = create_web(emova)
    port = free_port()
    demo.queue(default_concurrency_limit=1).launch(server_name="127.0.0.1", server_port=port,
                                                   prevent_thread_lock=True, quiet=True, show_error=True)
    try:
        yield f"http://127.0.0.1:{port}", results
    finally:
        demo.close()
        mp.undo()


@pytest.fixture(scope="module")
def page(web):
    from playwright.sync_api import expect, sync_playwright

    url, _ = web
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                                          "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
        context = browser.new_context(permissions=["microphone"])  # Chromium's fake microphone: beeps
        pg = context.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)  # this machine may be busy: wait for answers generously

        def local_only(route):  # nothing but the app itself
            u = route.request.url
            if u.startswith(url) or u.startswith(("data:", "blob:")):
                route.continue_()
            else:
                route.abort()

        pg.route("**/*", local_only)
        pg.goto(url + "/")
        pg.wait_for_selector("#emova-send")
        yield pg
        browser.close()


def _upload_audio(page, path: Path) -> None:
    upload = page.locator("#emova-audio-in button[aria-label='Upload file']")
    if upload.count():  # the microphone is the default source
        upload.click()
    with page.expect_response(lambda r: "/upload" in r.url and r.request.method == "POST"):
        page.locator("#emova-audio-in input[type=file]").set_input_files(str(path))


def test_upload_wav_and_image_get_text_and_audio(web, page, tmp_path, speech, image):  # noqa: F811
    from playwright.sync_api import expect

    _, results = web
    wav, png = tmp_path / "question.wav", tmp_path / "shapes.png"
    speech.save(wav)
    image.save(png)
    _upload_audio(page, wav)
    page.locator("#emova-image-in input[type=file]").set_input_files(str(png))
    page.wait_for_selector("#emova-image-in img")
    page.wait_for_selector("#emova-audio-in button[aria-label='Play']")  # the clip is loaded in the page
    page.click("#emova-send")

    expect(page.locator("#emova-reply-text textarea")).to_have_value(ANSWER["assistant response text"])
    expect(page.locator("#emova-transcript textarea")).to_have_value(ANSWER["user question text"])
    expect(page.locator("#emova-status")).to_contain_text("Replied")
    expect(page.locator("#emova-labels")).to_contain_text("gender-female_emotion-sad_speed-normal_pitch-low")
    expect(page.locator("#emova-chat")).to_contain_text(ANSWER["assistant response text"])

    players = page.locator("#emova-reply-audio audio")  # Playwright's CSS pierces the player's shadow DOM
    page.wait_for_function(
        "() => [...document.querySelectorAll('#emova-reply-audio *')].some(e => e.shadowRoot && "
        "[...e.shadowRoot.querySelectorAll('audio')].some(a => a.src && a.readyState >= 1))"
        " || [...document.querySelectorAll('#emova-reply-audio audio')].some(a => a.src && a.readyState >= 1)")
    loaded = [x for x in players.evaluate_all("els => els.map(a => [a.currentSrc || a.src, a.duration])") if x[0]]
    assert loaded, "no <audio> element with a source"
    src, seconds = loaded[0]
    assert src.startswith(("blob:", "http://127.0.0.1"))
    assert len(results) == 1 and results[0].audio is not None
    assert seconds == pytest.approx(results[0].audio.duration, abs=0.01)


def test_bad_upload_shows_an_error(web, page, tmp_path):
    from playwright.sync_api import expect

    _, results = web
    n = len(results)
    bad = tmp_path / "notes.wav"
    bad.write_bytes(b"these are not the bytes of a wav file " * 100)
    page.click("#emova-clear")
    expect(page.locator("#emova-reply-text textarea")).to_have_value("")
    _upload_audio(page, bad)
    page.click("#emova-send")
    expect(page.locator("#emova-status")).to_contain_text("Error:")
    assert "audio" in page.locator("#emova-status").inner_text().lower()
    assert len(results) == n  # the model was never called
    assert "/tmp/" not in page.locator("#emova-status").inner_text()  # names the file, not a server path
    page.locator("#emova-audio-in button[aria-label='Clear']").click()  # the person removes the bad clip
    page.locator("#emova-text-in textarea").fill("hello there")  # and the page still answers
    page.click("#emova-send")
    expect(page.locator("#emova-status")).to_contain_text("Replied")


def test_microphone_recording_is_answered(web, page):
    from playwright.sync_api import expect

    _, results = web
    n = len(results)
    page.click("#emova-clear")
    expect(page.locator("#emova-reply-text textarea")).to_have_value("")
    mic = page.locator("#emova-audio-in button[aria-label='Record audio']")
    if mic.count():
        mic.click()
    page.locator("#emova-audio-in button.record-button").click()
    page.wait_for_timeout(1500)
    with page.expect_response(lambda r: "/upload" in r.url and r.request.method == "POST"):
        page.locator("#emova-audio-in button.stop-button").first.click()
    page.wait_for_selector("#emova-audio-in button[aria-label='Play']")
    page.click("#emova-send")
    expect(page.locator("#emova-reply-text textarea")).to_have_value(ANSWER["assistant response text"])
    assert len(results) == n + 1 and results[-1].mode == "spoken"  # the recording reached the model as speech
