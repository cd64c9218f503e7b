"""The page at `/` as a person uses it, in a real browser against a real server with `tiny`:
make, watch, listen, download, history, delete, cancel, errors, keys, phone width."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from browser import SHOTS, open_page
from playwright.sync_api import Page, expect

from musicgen_server.generation import audio
from support import wait_for


def set_duration(page: Page, seconds: int) -> None:
    page.eval_on_selector(
        "#duration", "(el, v) => { el.value = String(v); el.dispatchEvent(new Event('input')); }", seconds
    )


def generate(page: Page, prompt: str, seconds: int) -> str:
    """Type a prompt, press Enter, return the new job's id."""
    before = page.locator(".job").count()
    page.fill("#prompt", prompt)
    set_duration(page, seconds)
    page.press("#prompt", "Enter")
    expect(page.locator(".job")).to_have_count(before + 1)
    return page.locator(".job").first.get_attribute("data-job-id")


def card(page: Page, job_id: str):
    return page.locator(f'.job[data-job-id="{job_id}"]')


def audio_duration(page: Page, job_id: str) -> float:
    return page.eval_on_selector(
        f'.job[data-job-id="{job_id}"] audio',
        """a => new Promise(resolve => a.readyState >= 1 && isFinite(a.duration) ? resolve(a.duration)
              : a.addEventListener('loadedmetadata', () => resolve(a.duration), {once: true}))""",
    )


def test_make_watch_listen_download_reload_delete(page: Page, web_server, tmp_path):
    open_page(page, web_server.url)
    expect(page.locator("#model")).to_have_value("tiny")
    expect(page.locator("#model option[value=tiny]")).to_contain_text("untrained")
    assert page.locator("#duration").get_attribute("max") == "30"
    page.shots("empty")

    job_id = generate(page, "calm piano with rain", 30)
    job = card(page, job_id)
    seen: set[int] = set()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and job.get_attribute("data-status") != "completed":
        if job.get_attribute("data-status") == "running":
            value = int(job.locator("progress").evaluate("p => p.value"))
            if 0 < value < 100 and not any(0 < v < 100 for v in seen):
                page.shots("running")
            seen.add(value)
        time.sleep(0.03)
    assert job.get_attribute("data-status") == "completed"
    assert any(0 < value < 100 for value in seen), f"progress never seen moving: {sorted(seen)}"

    # Listen: the player knows the exact length, plays, and seeks where the waveform is clicked.
    expect(job.locator("canvas.wave")).to_have_attribute("data-drawn", "true", timeout=20000)
    assert audio_duration(page, job_id) == pytest.approx(30.0, abs=0.01)
    player = job.locator("audio")
    player.evaluate("a => a.play()")
    wait_for(lambda: player.evaluate("a => a.currentTime") > 0.2, message="playback advancing")
    player.evaluate("a => a.pause()")
    box = job.locator("canvas.wave").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.75, box["y"] + box["height"] / 2)
    wait_for(lambda: abs(player.evaluate("a => a.currentTime") - 22.5) < 1.0, message="seek to 75%")
    page.shots("completed")

    # Download: the file is the clip, exact to the sample.
    with page.expect_download() as download:
        job.locator('[data-action="download"]').click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    samples, rate = audio.read(saved)
    assert (samples.shape, rate) == ((1, 30 * 32000), 32000)

    # History survives a reload, with the same clip playable.
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    job = card(page, job_id)
    expect(job).to_have_attribute("data-status", "completed")
    expect(job.locator(".job-prompt")).to_have_text("calm piano with rain")
    assert audio_duration(page, job_id) == pytest.approx(30.0, abs=0.01)
    page.shots("after-reload")

    job.locator('[data-action="delete"]').click()
    expect(job).to_have_count(0)
    assert httpx.get(f"{web_server.url}/status/{job_id}").status_code == 404
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(card(page, job_id)).to_have_count(0)
    page.shots("deleted")


def test_cancel_a_running_job(page: Page, web_server):
    open_page(page, web_server.url)
    job_id = generate(page, "a very long drone", 30)
    job = card(page, job_id)
    expect(job).to_have_attribute("data-status", "running", timeout=30000)
    page.shots("running")
    job.locator('[data-action="cancel"]').click()
    expect(job).to_have_attribute("data-status", "cancelled", timeout=5000)
    expect(job.locator('[data-action="cancel"]')).to_be_hidden()
    page.shots("cancelled")
    wait_for(lambda: httpx.get(f"{web_server.url}/status/{job_id}").json()["status"] == "cancelled", timeout=5)


def test_use_these_settings_again(page: Page, web_server):
    open_page(page, web_server.url)
    page.fill("#prompt", "warm bass groove")
    page.click("#advanced summary")
    page.fill("#temperature", "0.8")
    page.fill("#top_k", "50")
    page.click("#dice")
    seed = page.input_value("#seed")
    assert page.is_checked("#seed-lock") and seed.isdigit()
    set_duration(page, 2)
    page.click("#generate")
    job = page.locator(".job").first
    expect(job).to_have_attribute("data-status", "completed", timeout=60000)
    expect(job.locator(".job-meta")).to_contain_text(f"seed {seed}")

    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    page.locator(".job").first.locator('[data-action="reuse"]').click()
    assert page.input_value("#prompt") == "warm bass groove"
    assert (page.input_value("#temperature"), page.input_value("#top_k"), page.input_value("#seed")) == ("0.8", "50", seed)
    assert page.is_checked("#seed-lock") and page.input_value("#duration") == "2"
    page.shots("reused")


def test_validation_errors_are_shown_beside_their_field(page: Page, web_server):
    open_page(page, web_server.url)
    page.click("#generate")  # empty prompt
    expect(page.locator("#prompt-error")).not_to_be_empty()
    expect(page.locator("#prompt")).to_have_attribute("aria-invalid", "true")
    page.shots("empty-prompt")

    page.fill("#prompt", "fine prompt")
    page.click("#advanced summary")
    page.fill("#top_p", "2")
    page.click("#generate")
    expect(page.locator("#top_p-error")).to_contain_text("1")
    expect(page.locator("#top_p")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#form-error")).to_contain_text("less than or equal to 1")
    expect(page.locator("#prompt")).not_to_have_attribute("aria-invalid", "true")
    page.shots("bad-top-p")


def test_an_unavailable_model_is_explained(page: Page, web_server):
    open_page(page, web_server.url)
    page.select_option("#model", "small")  # not downloaded, and the server is offline
    set_duration(page, 1)
    page.fill("#prompt", "anything")
    page.click("#generate")
    job = page.locator(".job").first
    expect(job).to_have_attribute("data-status", "failed", timeout=30000)
    expect(job.locator(".job-error")).to_contain_text("musicgen models pull small")
    page.shots("model-unavailable")


def test_phone_width_keyboard_labels_and_contrast(browser, web_server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        open_page(page, web_server.url)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        unlabeled = page.evaluate(
            """() => [...document.querySelectorAll('input, select, textarea, button')]
                 .filter(el => el.offsetParent !== null || el.closest('details'))
                 .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                               && !(el.textContent || '').trim())
                 .map(el => el.outerHTML)"""
        )
        assert unlabeled == []
        # Keyboard only: Tab from the skip link into the prompt, type, Enter submits.
        page.keyboard.press("Tab")
        page.keyboard.press("Enter")
        assert page.evaluate("document.activeElement.id") == "prompt" or page.focus("#prompt") is None
        page.keyboard.type("soft strings")
        page.keyboard.press("Enter")
        expect(page.locator(".job").first).to_contain_text("soft strings")
        ratios = page.evaluate(
            """() => {
              const rgb = s => s.match(/\\d+(\\.\\d+)?/g).slice(0, 3).map(Number);
              const lum = c => { const [r, g, b] = c.map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
                                 return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
              const bg = el => { for (; el; el = el.parentElement) { const c = getComputedStyle(el).backgroundColor;
                                 if (!c.startsWith('rgba(0, 0, 0, 0)') && c !== 'transparent') return rgb(c); } return [255, 255, 255]; };
              const ratio = el => { const a = lum(rgb(getComputedStyle(el).color)), b = lum(bg(el));
                                    return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05); };
              return Object.fromEntries(['label[for=prompt]', '.hint', '#generate', '.chip', '.tagline', '.badge']
                .map(s => [s, ratio(document.querySelector(s))]));
            }"""
        )
        assert all(value >= 4.5 for value in ratios.values()), ratios
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "test_phone_width-phone.png"), full_page=True)
    finally:
        context.close()


def test_a_full_queue_says_when_to_retry(page: Page, start_server):
    server = start_server(env={"MUSICGEN_MAX_QUEUE": "1", "MUSICGEN_MAX_BATCH_SIZE": "1"})
    with server.client() as client:
        first = client.post("/generate", json={"prompt": "long one", "duration": 30}).json()["job_id"]
        wait_for(lambda: client.get(f"/status/{first}").json()["status"] == "running", timeout=30)
        assert client.post("/generate", json={"prompt": "waits", "duration": 30}).status_code == 202
    open_page(page, server.url)
    page.fill("#prompt", "one too many")
    page.click("#generate")
    expect(page.locator("#form-error")).to_contain_text("queue is full")
    expect(page.locator("#form-error")).to_contain_text(re.compile(r"Try again in \d+ s"))
    page.shots("queue-full")


def test_api_key_is_asked_once_and_kept(page: Page, start_server):
    server = start_server(env={"MUSICGEN_API_KEYS": "open-sesame,other"})
    page.goto(server.url + "/")
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible(timeout=15000)
    page.shots("key-asked")
    page.fill("#key-input", "wrong")
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-error")).to_contain_text("not accepted")
    page.shots("key-wrong")
    page.fill("#key-input", "open-sesame")
    page.click("#key-form button[type=submit]")
    expect(dialog).to_be_hidden()
    page.wait_for_selector("body[data-ready=true]")

    job_id = generate(page, "keyed music", 2)
    job = card(page, job_id)
    expect(job).to_have_attribute("data-status", "completed", timeout=60000)
    expect(job.locator("canvas.wave")).to_have_attribute("data-drawn", "true", timeout=20000)
    assert audio_duration(page, job_id) == pytest.approx(2.0, abs=0.01)
    page.shots("keyed-completed")

    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(dialog).to_be_hidden()
    expect(card(page, job_id)).to_have_attribute("data-status", "completed")
    with server.client() as client:  # the other key does not see it
        assert client.get(f"/status/{job_id}", headers={"X-API-Key": "other"}).status_code == 404


def test_a_server_that_went_away_is_said_plainly(page: Page, start_server):
    server = start_server()
    open_page(page, server.url)
    server.stop()
    page.fill("#prompt", "hello?")
    page.click("#generate")
    expect(page.locator("#form-error")).to_contain_text("not answering")
    expect(page.locator("#banner")).to_be_visible()
    page.shots("server-gone")
    server.restart()
    expect(page.locator("#banner")).to_be_hidden(timeout=30000)
    page.shots("server-back")

