"""The review page in a real headless browser: Debian's chromium through chromedriver (Selenium),
against a real `transferkit serve` on 127.0.0.1 whose review queue was filled by posting images to
it. One key press labels an image, the file and its manifest row land, and the next image is on
screen within 200 ms of the key press (measured in the page with performance.now(): from the
keydown to the animation frame after the swap).
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.helpers import ADMIN_TOKEN, tool_env
from tests.serving.test_app_live import start_server, stop
from tests.serving.test_monitor import noise_png
from transferkit.io import sha256_bytes
from transferkit.review_drop import INVALID, MANIFEST, UNDO, UNLABELLED
from transferkit.serving.settings import ADMIN_TOKEN_ENV

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SWAP_BUDGET_MS = 200.0
IMAGES = 8


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.fail("the browser test needs Debian's chromium and chromium-driver: .ci/run installs them (apt-get)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(argument)  # --no-sandbox: CI runs as root, where chromium's sandbox cannot start
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def review_server(model_ood: Path, tmp_path: Path) -> Iterator[tuple[str, Path, list[bytes]]]:
    """A real server with a review queue of noise images (out of distribution for model_ood), posted to it."""
    monitor, drop = tmp_path / "monitor", tmp_path / "elpv-reviewed"
    env = {**tool_env(), ADMIN_TOKEN_ENV: ADMIN_TOKEN}
    flags = ("--monitor-dir", str(monitor), "--review-drop", str(drop), "--max-batch-size", "1")
    server, url = start_server(model_ood, *flags, env=env)
    rng = np.random.default_rng(0)
    images = [noise_png(rng) for _ in range(IMAGES)]
    files = [("files", (f"noise{i}.png", image, "image/png")) for i, image in enumerate(images)]
    try:
        assert httpx.post(f"{url}/v1/predict/batch", files=files, timeout=60).status_code == 200
        until(lambda: httpx.get(f"{url}/v1/monitor").json()["review_queue"]["count"] == IMAGES, "the queue to fill")
        yield url, drop, images
    finally:
        stop(server)


def until(condition: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return result


def rows(drop: Path) -> list[dict]:
    path = drop / MANIFEST
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_one_key_press_labels_an_image_and_the_next_is_on_screen_within_200_ms(browser, review_server) -> None:
    from selenium.webdriver.common.by import By

    url, drop, images = review_server
    by_hash = {sha256_bytes(image): image for image in images}
    browser.get(f"{url}/review")
    browser.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
    browser.find_element(By.ID, "who").send_keys("inspector")
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    body = browser.find_element(By.TAG_NAME, "body")

    def shown() -> str:
        return body.get_attribute("data-item") or ""

    def ready() -> bool:
        """The image is on screen and the next one fetched and decoded (what a person waits for)."""
        image_drawn = browser.execute_script("return document.getElementById('image').naturalWidth > 0")
        return bool(shown()) and image_drawn and body.get_attribute("data-prefetched-after") == shown()

    until(ready, "the first image")
    assert browser.find_element(By.ID, "left").text == f"{IMAGES} left"
    assert [b.text.replace("\n", " ") for b in browser.find_elements(By.CSS_SELECTOR, "#actions button")] == [
        "1 functional", "2 defective", "s skip", f"x {INVALID}", "u undo",
    ]  # fmt: skip
    assert "out of distribution" in browser.find_element(By.ID, "reason").text

    swaps: list[tuple[str, float]] = []

    def press(key: str) -> str:
        """Press ``key`` on the page; the item shown after it, once it is ready again."""
        before, count = shown(), int(body.get_attribute("data-swaps") or 0)
        body.send_keys(key)
        until(lambda: int(body.get_attribute("data-swaps") or 0) == count + 1, f"the swap after {key!r}")
        swaps.append((key, float(body.get_attribute("data-swap-ms"))))
        until(lambda: ready() or body.get_attribute("data-item") == "", f"the page to settle after {key!r}")
        assert shown() != before
        return shown()

    first = shown()
    second = press("1")  # functional
    row = until(lambda: next(iter(rows(drop)), None), "the manifest row")
    assert (row["label"], row["who"], row["source"], row["model_reason"]) == (
        "functional", "inspector", "review page", "out of distribution",
    )  # fmt: skip
    saved = drop / "functional" / f"{row['image_sha256']}.png"
    assert saved.read_bytes() == by_hash[row["image_sha256"]]

    third = press("s")  # the second image skipped: it stays queued, nothing written
    assert len(rows(drop)) == 1 and third != second
    press("x")  # not a valid image
    until(lambda: len(rows(drop)) == 2, "the invalid label's row")
    assert rows(drop)[-1]["label"] == INVALID
    for _ in range(3):
        press("2")  # defective
    until(lambda: len(rows(drop)) == 5, "three defective rows")
    assert len(list((drop / "defective").iterdir())) == 3

    undone = press("u")  # the last label comes back to the screen and leaves the drop
    until(lambda: len(rows(drop)) == 6, "the undo row")
    assert (rows(drop)[-1]["label"], rows(drop)[-1]["source"]) == (UNLABELLED, UNDO)
    assert len(list((drop / "defective").iterdir())) == 2 and undone not in (first, second, third)
    left = httpx.get(f"{url}/v1/monitor").json()["review_queue"]
    assert (left["count"], left["labelled"]) == (IMAGES - 4, 4)  # 5 labels, 1 undone; the skipped one waits

    # To the end of the queue: the skipped image still waits, and "Start over" comes back to it.
    while shown():
        press("1")
    assert "1 skipped image(s) still wait" in browser.find_element(By.ID, "done-text").text
    browser.find_element(By.ID, "again").click()
    until(lambda: shown() == second, "the skipped image again")

    # A wrong token: the page says so and asks again.
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    message = until(lambda: browser.find_element(By.ID, "message").text, "the wrong token's message")
    assert message == "wrong admin token" and browser.find_element(By.ID, "login").is_displayed()

    # What the prefetch hides: one item from the server, the heatmap drawn by the model (a person who
    # presses faster than this waits for it).
    auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    fetch_ms = []
    for _ in range(5):
        started = time.perf_counter()
        assert httpx.get(f"{url}/v1/review/next", headers=auth).json()["item"]["overlay"]
        fetch_ms.append(1000 * (time.perf_counter() - started))
    # The figure for the report (pytest -s shows it). Labels and skips show the prefetched image; an undo
    # waits for the server to put its image back (not prefetched), so it is reported beside them.
    ahead = [ms for key, ms in swaps if key != "u"]
    undo_ms = [ms for key, ms in swaps if key == "u"]
    print(
        f"\nreview page, key press -> next image: {len(ahead)} label/skip swaps, median "
        f"{statistics.median(ahead):.1f} ms, max {max(ahead):.1f} ms (budget {SWAP_BUDGET_MS:.0f} ms); "
        f"undo {undo_ms[0]:.1f} ms; GET /v1/review/next (prefetched) median {statistics.median(fetch_ms):.1f} ms; "
        f"all: {swaps}"
    )
    assert max(ahead) < SWAP_BUDGET_MS, swaps
