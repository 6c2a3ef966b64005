"""The page at GET / in a real browser: headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium) chooses a voice, types the start of a tweet, clicks, and sees the tweets stream in as cards."""
from __future__ import annotations

import shutil

import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from helpers import TINY_GPT2_FUSED, serving  # noqa: E402
from tweetgen.serve import create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=900,1000"]


@pytest.fixture
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()


@pytest.fixture
def url():
    from tweetgen import Generator

    app = create_app(Generator.load(TINY_GPT2_FUSED, device="cpu"), max_rows=16)
    with serving(app, backlog=16) as base:
        yield base + "/"


def test_the_page_streams_tweet_cards_in_a_browser(browser, url, tmp_path):
    browser.get(url)
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#voice option")) == 2)  # the model's voices
    Select(browser.find_element(By.ID, "voice")).select_by_value("bob")
    count = browser.find_element(By.ID, "n")
    count.clear()
    count.send_keys("3")
    browser.find_element(By.ID, "prompt").send_keys("My dream is")
    browser.find_element(By.ID, "go").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card.done")) == 3)
    wait.until(lambda d: d.find_element(By.ID, "status").text == "3 tweets")
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    assert len(cards) == 3
    for card in cards:
        text = card.find_element(By.CSS_SELECTOR, ".text").get_attribute("textContent")
        assert text.startswith("My dream is") and len(text) > len("My dream is")
        assert card.find_element(By.CSS_SELECTOR, ".who").text == "@bob"
        assert card.find_element(By.CSS_SELECTOR, ".len").text == f"{len(text)} characters"
    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot: {shot}")
