"""The page at ``/`` driven in headless Chromium (Debian's ``chromium`` and ``chromium-driver``, through
Selenium): insert a blank with its button, generate, and see the span stream in; fill two blanks.

``SERVE_SCREENSHOT=docs/serve_page.png`` also writes the page's screenshot there (the README shows it; the
Chinese text needs a CJK font, e.g. Debian's ``fonts-wqy-zenhei``, to be readable in it).
"""
import os
import shutil

import pytest

pytest.importorskip("httpx")
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from test_serve import ServerProcess  # noqa: E402

from paddle_glm.demo_cases import DEMO_CASES  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.skipif(os.environ.get("PADDLE_GLM_BROWSER_TEST") == "0",
                       reason="make test BROWSER=0: the browser test is off (and chromium was not installed)"),
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                       reason="needs Debian's chromium and chromium-driver (make test installs them as root)"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess(tmp_path_factory.mktemp("browser") / "serve.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,640"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_the_page_fills_a_blank(server, browser, tmp_path):
    case = DEMO_CASES[0]  # 长江全长约[MASK]千米，是中国最长的河流。
    before, after = case.text.split("[MASK]")
    browser.get(server.url + "/")
    box = browser.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys(before)
    browser.find_element(By.CSS_SELECTOR, "button[data-token='[MASK]']").click()  # inserted at the cursor
    box.send_keys(after)
    assert box.get_attribute("value") == case.text
    browser.find_element(By.ID, "generate").click()
    status = browser.find_element(By.ID, "status")
    WebDriverWait(browser, 30).until(lambda _: status.text.startswith("done"))
    assert browser.find_element(By.CSS_SELECTOR, "#output mark").text == case.expected[0]
    assert browser.find_element(By.ID, "output").text == before + case.expected[0] + after
    shot = tmp_path / "serve_page.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:4] == b"\x89PNG"
    if os.environ.get("SERVE_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["SERVE_SCREENSHOT"])


def test_the_page_fills_every_blank(server, browser):
    case = DEMO_CASES[4]  # two blanks
    browser.get(server.url + "/")
    box = browser.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys(case.text)
    browser.find_element(By.ID, "fill").click()
    status = browser.find_element(By.ID, "status")
    WebDriverWait(browser, 30).until(lambda _: status.text.startswith("filled"))
    expected = case.text.replace("[MASK]", case.expected[0], 1).replace("[MASK]", case.expected[1])
    assert browser.find_element(By.ID, "output").text == expected
