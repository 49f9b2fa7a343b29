"""A person's view: the page in real headless Chromium, talking through a fake microphone.

Chromium plays a WAV made with espeak-ng as its microphone; the page streams it,
shows the transcript and the reply, and plays the reply audio. Then the past
conversations: the one just held shows up in the list, reads back, is continued by
text in the same session, and "Forget me" empties the list and the API.

The page is opened with an API key of the user ``alice`` (MORGAN_API_KEYS) in its URL's
fragment, so the history is hers, the REST calls carry the key as a Bearer header and
the socket opens with a ticket.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from testbed.morgan_process import MorganUp

pytestmark = pytest.mark.system

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
USER, API_KEY = "alice", "some-key"
REPLY_S = 240.0  # a spoken or typed turn's reply, on a busy CPU


@pytest.fixture(scope="module")
def morgan() -> Iterator[MorganUp]:
    # Not under pytest's tmp folder: as root the embedded PostgreSQL runs as nobody, and
    # another pytest run may make that folder 0700 under it.
    data = Path(tempfile.mkdtemp(prefix="morgan-browser-"))
    up = MorganUp(data, MORGAN_API_KEYS=f"{USER}:{API_KEY}")
    try:
        up.wait_ready()
        yield up
    finally:
        up.stop()
        shutil.rmtree(data, ignore_errors=True)


def page_url(morgan: MorganUp) -> str:
    # In the fragment, which no request carries; the page fetches a ticket for its socket.
    return f"{morgan.url}/#api_key={API_KEY}"


def api_get(morgan: MorganUp, path: str) -> Any:
    """The REST API as alice."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    response = httpx.get(morgan.url + path, headers=headers, timeout=30)
    response.raise_for_status()
    return response.json()


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


def texts(browser: Any, css: str) -> list[str]:
    """The elements' text as shown (white space collapsed, as ``norm`` does)."""
    try:
        return [e.text for e in browser.find_elements(By.CSS_SELECTOR, css)]
    except StaleElementReferenceException:  # re-rendered while read: read it next time
        return []


def norm(text: str) -> str:
    return " ".join(text.split())


def test_the_page_hears_a_spoken_question_and_answers_aloud(
    morgan: MorganUp, browser: Any, tmp_path: Path
) -> None:
    browser.get(page_url(morgan))
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


def settled(conversation: dict[str, Any], turns: int = 1) -> bool:
    """At least ``turns`` turns, each with the user's words and the reply recorded."""
    asked = {m["turn"] for m in conversation["messages"] if m["role"] == "user"}
    answered = {m["turn"] for m in conversation["messages"] if m["role"] == "assistant"}
    return len(asked) >= turns and asked == answered


def history_of(morgan: MorganUp, sid: str, turns: int) -> dict[str, Any]:
    """The conversation once the history kind (asynchronous, from EVENTS) has written
    ``turns`` whole turns of it."""

    def written() -> dict[str, Any] | None:
        response = httpx.get(
            f"{morgan.url}/api/conversations/{sid}",
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=30,
        )
        if response.status_code == 404:  # not written yet
            return None
        response.raise_for_status()
        found: dict[str, Any] = response.json()
        return found if settled(found, turns) else None

    found: dict[str, Any] = wait_until(written, REPLY_S)
    return found


def refresh_until(browser: Any, css: str, timeout: float = REPLY_S) -> Any:
    """Press Refresh until the list shows ``css`` (the history is written asynchronously)."""

    def shown() -> Any:
        browser.find_element(By.ID, "refresh").click()
        time.sleep(1.0)
        return browser.find_elements(By.CSS_SELECTOR, css)

    return wait_until(shown, timeout)


def test_a_person_finds_reads_continues_and_forgets_a_conversation(
    morgan: MorganUp, browser: Any, tmp_path: Path
) -> None:
    # Talk: the spoken question, answered.
    browser.get(page_url(morgan))
    talk = browser.find_element(By.ID, "talk")
    wait_until(lambda: talk.is_enabled(), 30)
    sid = browser.execute_script("return state.sessionId")
    talk.click()
    wait_until(lambda: texts(browser, "#log .user"), REPLY_S)
    wait_until(lambda: [t for t in texts(browser, "#log .bot") if t], REPLY_S)
    talk.click()  # the microphone off: the question is all there is to say

    # It shows up among the past conversations (after Refresh; written asynchronously).
    item = f'#conversations li[data-id="{sid}"]'
    refresh_until(browser, item)
    said = history_of(morgan, sid, turns=1)
    assert said["user"] == USER  # the key's user, from MORGAN_API_KEYS
    asked, answer = said["messages"]
    assert (asked["role"], asked["input"], answer["role"]) == ("user", "voice", "assistant")
    question, said_back = norm(asked["text"]), norm(answer["text"])
    assert said_back
    # what the page showed is what was kept
    wait_until(lambda: texts(browser, "#log .user") == [question], 30)
    wait_until(lambda: texts(browser, "#log .bot") == [said_back], REPLY_S)

    # Later, a new page (a new session); the list there opens the conversation. (Through
    # a blank page: the same URL with the same fragment would not load the page again.)
    browser.get("about:blank")
    browser.get(page_url(morgan))
    wait_until(lambda: browser.find_element(By.ID, "talk").is_enabled(), 30)
    assert browser.execute_script("return state.sessionId") not in (None, sid)
    link = wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, item + " a"), 30)
    assert "1 turn" in browser.find_element(By.CSS_SELECTOR, item).text
    link[0].click()
    reading = browser.find_element(By.ID, "reading")
    wait_until(lambda: reading.is_displayed() and texts(browser, "#reading .bot"), 30)
    assert texts(browser, "#reading .user") == [question]
    assert texts(browser, "#reading .bot") == [said_back]
    heard = question.lower()
    assert sum(word in heard for word in ("color", "sky", "sunny", "day")) >= 3, heard

    # Continue it by text: answered in that same session.
    browser.find_element(By.ID, "continue").click()
    wait_until(lambda: browser.find_element(By.ID, "status").text == "resumed", 30)
    assert browser.execute_script("return state.sessionId") == sid
    assert not reading.is_displayed()
    assert texts(browser, "#log .user") == [question]  # the conversation so far
    assert texts(browser, "#log .bot") == [said_back]
    follow_up = "and what color is it at night"
    browser.find_element(By.ID, "text").send_keys(follow_up)
    browser.find_element(By.CSS_SELECTOR, "#typed button").click()
    both = history_of(morgan, sid, turns=2)
    assert browser.execute_script("return state.sessionId") == sid
    typed, reply = [m for m in both["messages"] if m["turn"] != asked["turn"]]
    assert (typed["role"], typed["input"], norm(typed["text"])) == ("user", "text", follow_up)
    assert reply["role"] == "assistant" and norm(reply["text"])
    wait_until(lambda: texts(browser, "#log .user") == [question, follow_up], 30)
    wait_until(lambda: texts(browser, "#log .bot") == [said_back, norm(reply["text"])], REPLY_S)
    # the resume cursor tracks real event ids again (a later drop resumes from there)
    assert 0 < browser.execute_script("return state.lastEvent") < 2**53 - 1
    listed = {c["id"]: c for c in api_get(morgan, "/api/conversations")["conversations"]}
    assert listed[sid]["turns"] == 2
    assert not texts(browser, "#log .err")
    browser.save_screenshot(str(tmp_path / "history.png"))
    shutil.copy(tmp_path / "history.png", Path("/tmp/morgan-browser-history.png"))

    # Forget me: every conversation of hers goes (wait for late writes of other tests').
    for c in listed.values():
        history_of(morgan, c["id"], turns=1)
    browser.find_element(By.ID, "forget").click()

    def confirm() -> bool:
        try:
            browser.switch_to.alert.accept()
        except NoAlertPresentException:
            return False
        return True

    wait_until(confirm, 10)
    wait_until(lambda: texts(browser, "#conversations li") == ["none yet"], 30)
    gone = [t for t in texts(browser, "#log .bot") if t.startswith("Forgotten:")]
    assert len(gone) == 1 and gone[0].startswith(f"Forgotten: {len(listed)} conversations"), gone
    assert api_get(morgan, "/api/conversations")["conversations"] == []
    assert not texts(browser, "#log .err")
