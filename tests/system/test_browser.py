"""A person's view: the page in real headless Chromium, talking through a fake microphone.

Chromium plays a WAV made with espeak-ng as its microphone; the page streams it,
shows the transcript and the reply, and plays the reply audio.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from testbed.morgan_process import MorganUp

pytestmark = pytest.mark.system

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def morgan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MorganUp]:
    up = MorganUp(tmp_path_factory.mktemp("morgan"))
    try:
        up.wait_ready()
        yield up
    finally:
        up.stop()


@pytest.fixture
def microphone(tmp_path: Path) -> Path:
    """A spoken question followed by silence, as a WAV for Chromium's fake microphone."""
    raw, wav = tmp_path / "q.wav", tmp_path / "mic.wav"
    subprocess.run(
        [
            "espeak-ng",
            "-v",
            "en-us",
            "-s",
            "150",
            "-w",
            str(raw),
            "what color is the sky on a sunny day",
        ],
        check=True,
    )
    subprocess.run(
        ["sox", str(raw), "-r", "48000", "-c", "1", "-b", "16", str(wav), "pad", "1.0", "4.0"],
        check=True,
    )
    return wav


@pytest.fixture
def browser(microphone: Path, tmp_path: Path) -> Iterator[Any]:
    if not (shutil.which(CHROMIUM) and shutil.which(DRIVER)):
        pytest.fail("chromium and chromium-driver are needed: scripts/setup --test installs them")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}%noloop",
        "--autoplay-policy=no-user-gesture-required",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(cond: Any, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("the page did not get there in time")


def test_the_page_hears_a_spoken_question_and_answers_aloud(
    morgan: MorganUp, browser: Any, tmp_path: Path
) -> None:
    browser.get(morgan.url + "/")
    talk = browser.find_element(By.ID, "talk")
    wait_until(lambda: talk.is_enabled(), 30)
    talk.click()
    user = wait_until(lambda: [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".user")])
    bot = wait_until(
        lambda: [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".bot") if e.text]
    )
    played = wait_until(lambda: browser.execute_script("return state.lastAudio"))
    browser.save_screenshot(str(tmp_path / "page.png"))
    shutil.copy(tmp_path / "page.png", Path("/tmp/morgan-browser-test.png"))
    heard = " ".join(user).lower()  # tiny.en may mishear a word ("is this guy"), not most
    assert sum(word in heard for word in ("color", "sky", "sunny", "day")) >= 3, heard
    assert bot[0].strip()
    assert played > 0  # reply audio reached the page's player
