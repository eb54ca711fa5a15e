"""The page in a real browser: headless Debian chromium driven by Selenium through chromedriver.

Uploads a real Fashion-MNIST test image through the file input of GET / on the real gunicorn
server and checks what the page shows against /v1/predict. chromium and chromium-driver are
test dependencies (the Makefile installs them): without them this test fails, it never skips.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from bench.server import REPO, Server
from models.data import load_fashion_mnist
from tests.service.conftest import API_KEY

DEFAULT_CHECKPOINT = REPO / "checkpoints" / "model.pt"
DATASET = Path("/usr/share/datasets/fashion-mnist")
# A Fashion-MNIST test image that is not one of the page's built-in samples.
TEST_IMAGE_INDEX = 16
# Set to a path (docs/page.png) to keep the screenshot beyond the test's temporary folder.
SCREENSHOT_ENV = "CONVSERVE_PAGE_SCREENSHOT"


@pytest.fixture(scope="module")
def page_server(
    tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The default model when it has been trained (make test trains it first), else the tiny one."""
    model = DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT.exists() else tiny_checkpoint
    workdir = tmp_path_factory.mktemp("page")
    running = Server(workdir, {"CONVSERVE_MODEL_PATH": str(model), "CONVSERVE_WORKERS": "1"})
    yield running.start()
    running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail(
            "chromium and chromium-driver are needed: apt-get install chromium chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,2400",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    running = webdriver.Chrome(options=options, service=Service(driver))
    yield running
    running.quit()


def _open_page(browser: webdriver.Chrome, server: Server) -> None:
    """Loads / and waits for its built-in samples."""
    browser.get(server.url + "/")
    WebDriverWait(browser, 10).until(
        lambda b: len(b.find_elements(By.CSS_SELECTOR, ".sample")) == 10
    )


def _test_image(folder: Path) -> Path:
    test = load_fashion_mnist(DATASET).test
    assert test is not None
    path = folder / f"fashion-mnist-test-{TEST_IMAGE_INDEX}.png"
    Image.fromarray(test.pixels[TEST_IMAGE_INDEX, 0].numpy(), "L").save(path)
    return path


def _predicted_label(server: Server, path: Path) -> str:
    response = server.post(
        "/v1/predict", data=path.read_bytes(), headers={"Content-Type": "image/png"}
    )
    label: str = response.json()["predictions"][0]["label"]
    return label


def _wait_for_answer(browser: webdriver.Chrome, label: str) -> None:
    WebDriverWait(browser, 30).until(
        lambda b: (
            b.find_element(By.ID, "status").text.startswith("Done")
            and b.find_element(By.ID, "top-label").text.startswith(label + " (")
        )
    )


def _images_rendered(browser: webdriver.Chrome, selector: str) -> list[int]:
    """naturalWidth of every image matched by `selector`, once all of them have loaded."""
    script = (
        "return Array.from(document.querySelectorAll(arguments[0]))"
        ".map(i => i.complete ? i.naturalWidth : -1);"
    )
    WebDriverWait(browser, 10).until(lambda b: -1 not in b.execute_script(script, selector))
    widths: list[int] = browser.execute_script(script, selector)
    return widths


def test_page_explains_an_uploaded_fashion_mnist_image(
    page_server: Server, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    image = _test_image(tmp_path)
    expected = _predicted_label(page_server, image)
    model = page_server.get("/v1/model").json()
    layers = [row for row in model["architecture"]["layers"] if row["name"].startswith("features.")]

    _open_page(browser, page_server)
    assert browser.title.startswith("convserve")
    browser.find_element(By.ID, "file-input").send_keys(str(image))
    _wait_for_answer(browser, expected)

    rows = browser.find_elements(By.CSS_SELECTOR, "#scores tbody tr")
    assert rows[0].find_element(By.TAG_NAME, "th").text == expected
    assert model["version"] in browser.find_element(By.ID, "model-line").text
    assert "total" in browser.find_element(By.ID, "timings").text
    map_widths = _images_rendered(browser, "#layers img")
    assert len(map_widths) == sum(row["output_shape"][0] for row in layers)
    assert sorted(set(map_widths)) == sorted({row["output_shape"][2] for row in layers})
    assert _images_rendered(browser, "#kernels img") == [3] * layers[0]["output_shape"][0]
    width = model["input"]["width"]
    assert _images_rendered(browser, "#cam-overlay, #cam-heatmap, #input-image") == [width] * 3
    sections = browser.find_elements(By.CSS_SELECTOR, "#layers section")
    assert len(sections) == len(layers)
    assert all(s.find_element(By.TAG_NAME, "p").text for s in sections)  # one sentence each
    alt = browser.find_element(By.CSS_SELECTOR, "#layers img").get_attribute("alt")
    assert alt and "values" in alt

    _save_screenshot(browser, tmp_path)
    _check_console(browser)


def test_keyboard_picks_a_sample_and_a_target_class(
    page_server: Server, browser: webdriver.Chrome
) -> None:
    _open_page(browser, page_server)
    samples = browser.find_elements(By.CSS_SELECTOR, ".sample")
    for _ in range(12):  # Tab from the top: the file input, then the first sample
        ActionChains(browser).send_keys(Keys.TAB).perform()
        if browser.switch_to.active_element == samples[0]:
            break
    ActionChains(browser).send_keys(Keys.TAB).perform()
    assert browser.switch_to.active_element == samples[1]  # Trouser
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    expected = _predicted_label(
        page_server, REPO / "service" / "static" / "samples" / "trouser.png"
    )
    _wait_for_answer(browser, expected)
    classes = page_server.get("/v1/model").json()["classes"]
    Select(browser.find_element(By.ID, "target")).select_by_visible_text(classes[5])
    WebDriverWait(browser, 30).until(
        lambda b: f'"{classes[5]}"' in b.find_element(By.ID, "cam-caption").text
    )
    _check_console(browser)


def test_api_key_is_asked_for_and_kept_in_the_tab_only(
    strict_server: Server, browser: webdriver.Chrome
) -> None:
    _open_page(browser, strict_server)
    coat = REPO / "service" / "static" / "samples" / "coat.png"
    browser.find_element(By.ID, "file-input").send_keys(str(coat))
    error = browser.find_element(By.ID, "error")
    WebDriverWait(browser, 30).until(lambda _: error.is_displayed())
    assert "Unauthorized" in error.text and "API key" in error.text
    key = browser.find_element(By.ID, "api-key")
    assert browser.switch_to.active_element == key  # Options opened, the key field focused
    key.send_keys(API_KEY, Keys.TAB)
    browser.find_elements(By.CSS_SELECTOR, ".sample")[4].click()  # the Coat sample
    response = strict_server.post(
        "/v1/predict",
        data=coat.read_bytes(),
        headers={"Content-Type": "image/png", "Authorization": f"Bearer {API_KEY}"},
    )
    _wait_for_answer(browser, response.json()["predictions"][0]["label"])
    assert not error.is_displayed()
    assert browser.execute_script("return localStorage.length;") == 0
    assert browser.execute_script("return sessionStorage.getItem('convserve.apiKey');") == API_KEY
    urls = browser.execute_script(
        "return [location.href, ...performance.getEntriesByType('resource').map(e => e.name)];"
    )
    assert urls and not any(API_KEY in url for url in urls)
    # The one refused request is on the console; nothing else is.
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert len(errors) == 1 and "401" in errors[0], errors


def _save_screenshot(browser: webdriver.Chrome, folder: Path) -> None:
    path = folder / "page.png"
    browser.execute_script("window.scrollTo(0, 0);")
    assert browser.save_screenshot(str(path))
    with Image.open(path) as shot:
        assert shot.size[0] >= 1000
    keep = os.environ.get(SCREENSHOT_ENV)
    if keep:
        shutil.copyfile(path, keep)


def _check_console(browser: webdriver.Chrome) -> None:
    """No errors, CSP violations included (chromium reports them on the console)."""
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
