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


def test_each_codec_keeps_its_colour() -> None:
    from ctc.report import codec_colours

    a = codec_colours(["image_anchor", "feature_anchor", "vvc_msff", "learned_e2e", "my_codec", "other"])
    b = codec_colours(["other", "learned_e2e", "my_codec", "image_anchor"])
    assert a["image_anchor"] == b["image_anchor"] == "#000000"  # the project's codecs: fixed colours
    assert a["learned_e2e"] == b["learned_e2e"] and a["my_codec"] == b["my_codec"] and a["other"] == b["other"]
    assert len(set(a.values())) == len(a)  # distinct within a plot
    many = codec_colours([f"c{i}" for i in range(15)])
    assert len(set(many.values())) == 15


def test_report_reads_in_one_unit_rounded_and_zoomed(tmp_path: Path) -> None:
    import re

    from ctc.metrics import curves
    from ctc.report import plot_rate_range

    cfg = load_config(write_fake_config(tmp_path / "data", n_images=2))
    out = tmp_path / "run"
    run_ctc(cfg, out)
    report = build_report(out)
    html = (out / "report.html").read_text()
    assert "[0, 1]" not in html and "BD-mAP, points of % (pchip)" in html and "BD-rate % (pchip)" in html
    assert "overlap % (mAP / rate)" in html
    summary = html.split('id="summary"')[1].split("</table>")[0]
    cells = re.findall(r"<td>([-+0-9.e]+)</td>", summary)
    assert cells and all(len(c.replace("-", "").replace(".", "").lstrip("0")) <= 6 for c in cells)  # rounded
    # the plots show the coded curves, not the raw float32 reference far to their right
    lo, hi = plot_rate_range(report.points)
    coded = [p.bpp for c in curves(report.points).values() if len(c) > 1 for p in c]
    ref = next(p.bpp for p in report.points if p.codec == "uncompressed")
    assert lo < min(coded) and max(coded) < hi < ref
    assert plot_rate_range([p for p in report.points if p.codec == "uncompressed"]) is None
    table = report.bd_table()
    assert (
        table.startswith("BD-rate vs anchors, mAP@0.5") and "(front, pchip)" in table and "(monotone, pchip)" in table
    )
