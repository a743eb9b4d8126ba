"""report.html loads in headless Chromium: title, decoded RD-curve images, table rows."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from test_ctc_fakes import write_fake_config

from ctc.config import load_config
from ctc.report import build_report
from ctc.runner import run_ctc

CHROMIUM = "/usr/bin/chromium"


def _driver():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    return webdriver.Chrome(service=Service(driver_path), options=options)


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="Debian chromium not installed (apt-get install -y chromium chromium-driver)"
)
def test_report_loads_in_headless_chromium(tmp_path: Path) -> None:
    cfg = load_config(write_fake_config(tmp_path / "data", n_images=2))
    out = tmp_path / "run"
    run_ctc(cfg, out)
    build_report(out, {"git_commit": "abc", "packages": {"torch": "x"}})
    driver = _driver()
    try:
        driver.get((out / "report.html").as_uri())
        assert driver.title == "FCM CTC report: fake"
        widths = driver.execute_script(
            "return Array.from(document.querySelectorAll('img.rd')).map(i => i.complete ? i.naturalWidth : 0)"
        )
        assert len(widths) == 2 and all(w == 700 for w in widths)  # 7 in x 100 dpi
        rows = driver.execute_script(
            "return Object.fromEntries(['bd', 'near_lossless', 'summary', 'meta'].map("
            "id => [id, document.querySelectorAll('#' + id + ' tbody tr').length]))"
        )
        # BD rows: fine vs coarse, 2 metrics, 2 curve kinds (front, monotone)
        assert rows["summary"] == 9 and rows["bd"] == 4 and rows["near_lossless"] == 4 and rows["meta"] > 5
        first = driver.execute_script("return document.querySelector('#summary tbody td').textContent")
        assert first == "coarse"
    finally:
        driver.quit()
