"""The scoring page in a real headless browser (Debian's chromium + chromedriver, via Selenium).

An image dropped on the page and images chosen with the file picker show their P(fake) and
verdict, equal to ``Detector.score_images``; a broken file shows its error; the model card
and the report link appear. A screenshot is kept under ``$CLIPDETECT_TEST_ARTIFACTS``
(default ``test-artifacts/``) and its path printed. Skipped, with the reason, where no
browser is installed (``.ci/run`` installs one with apt, best effort).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from helpers.serve import png, running_server
from helpers.training import tiny_detector
from clipdetect.serve.config import ServeConfig

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("CLIPDETECT_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

DROP_JS = """
const input = document.createElement('input');
input.type = 'file'; input.id = 'test-dropper'; input.multiple = true;
document.body.append(input);
"""
DISPATCH_JS = """
const dt = new DataTransfer();
for (const f of document.getElementById('test-dropper').files) dt.items.add(f);
const zone = document.getElementById('drop');
for (const kind of ['dragenter', 'dragover', 'drop']) {
  zone.dispatchEvent(new DragEvent(kind, {dataTransfer: dt, bubbles: true, cancelable: true}));
}
"""


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip("no headless browser: Debian's chromium and chromium-driver are not installed "
                    "(apt-get install chromium chromium-driver; .ci/run tries it)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra)")
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1100,1000"):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    except WebDriverException as exc:
        pytest.skip(f"chromium is installed but does not start here: {str(exc).splitlines()[0]}")
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _rows(driver):
    from selenium.webdriver.common.by import By

    return {tr.get_attribute("data-name"): [td.text for td in tr.find_elements(By.TAG_NAME, "td")][1:]
            for tr in driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")}


def test_dropped_and_chosen_images_show_their_scores(browser, tiny_backbone, tmp_path, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    det = tiny_detector(tiny_backbone)
    files = {"dropped.png": png(11, size=(64, 64), fake=True), "chosen-a.png": png(12, size=(80, 60)),
             "chosen-b.png": png(13, size=(40, 90), fake=True)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "broken.png").write_bytes(b"this is not an image")
    report = tmp_path / "report.html"
    report.write_text("<!doctype html><title>r</title><h1>Detector report</h1>")
    want = dict(zip(files, det.score_images(list(files.values()), backbone=tiny_backbone).to_dict("records")))
    wait = WebDriverWait(browser, 60)
    with running_server(det, tiny_backbone, ServeConfig(port=0, report=str(report)), name="tiny-det") as (url, _):
        browser.get(url + "/")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#card dt"))
        card = browser.find_element(By.ID, "card").text
        assert "tiny-det" in card and "clipdetect-tiny-vit:random" in card and "P(fake) >" in card
        wait.until(lambda d: d.find_element(By.ID, "report-link").is_displayed())

        browser.execute_script(DROP_JS)
        browser.find_element(By.ID, "test-dropper").send_keys(str(tmp_path / "dropped.png"))
        browser.execute_script(DISPATCH_JS)
        wait.until(lambda d: "dropped.png" in _rows(d))

        chosen = [tmp_path / n for n in ("chosen-a.png", "chosen-b.png", "broken.png")]
        browser.find_element(By.ID, "files").send_keys("\n".join(map(str, chosen)))
        wait.until(lambda d: len(_rows(d)) == 4)
        rows = _rows(browser)
        status = browser.find_element(By.ID, "status").text
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "serve_page.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    with capsys.disabled():
        print(f"\npage screenshot: {shot}")
    for name, row in want.items():
        shown_name, prob, verdict, _ = rows[name]
        assert shown_name == name and prob == f"{100 * row['probability']:.1f}%"
        assert verdict == ("fake" if row["label"] == 1 else "real")
    assert rows["broken.png"][2] == "error" and "not_an_image" in rows["broken.png"][3]
    assert status.startswith("Scored 2 of 3 image(s) in ") and status.endswith(" ms.")
