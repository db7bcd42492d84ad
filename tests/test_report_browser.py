"""rlaif report in a real headless browser: Debian's chromium driven by Selenium through
chromedriver (scripts/setup_browser.sh installs both; `make test` runs it first).

The report of a generate+label, a label and a training run folder, side by side, opened from
file://: a full-page screenshot is taken, every image has decoded (naturalWidth > 0), no
network request other than the page itself is made (every request the browser issues is
recorded through the DevTools protocol, and a local server stands ready to count any request
that model text might smuggle in), and model text with HTML in it renders as text.

Outside CI these tests skip, with the reason, where the browser is missing; under CI
(CI=true) they fail instead, so a CI run can never pass without them. Set REPORT_SCREENSHOT
to a file name to keep the screenshot.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

if os.environ.get("CI") != "true":  # under CI a missing package is a failure, not a skip
    pytest.importorskip("jinja2")
    pytest.importorskip("matplotlib")

from browser import start_chromium  # noqa: E402
from rlaif.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def driver():
    d = start_chromium(width=1500, quiet=True, log_network=True, page_timeout_s=60)
    yield d
    d.quit()


class Trap(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802
        Trap.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def trap():
    """A local HTTP server that records every request: model text points at it."""
    Trap.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Trap)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def make_runs(base: Path, trap_url: str) -> list[Path]:
    hostile = (f'<script>document.title="pwned"</script><img src="{trap_url}/img.png"> '
               f'<link rel="stylesheet" href="{trap_url}/style.css"> <b style="background:url({trap_url}/bg)">bold</b>')
    prompts = base / "prompts.jsonl"
    rows = [{"id": "h1", "prompt": hostile, "category": "hostile"}] + [
        {"id": f"p{i}", "prompt": f"Question number {i}: how do I do thing {i}?", "category": f"c{i % 3}"} for i in range(11)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    gen = base / "gen"
    assert main(["generate", "--backend", "fake", "--prompts", str(prompts), "--out", str(gen), "--rounds", "2",
                 "--label", "--quiet"]) == 0
    lab = base / "lab"
    assert main(["label", "--backend", "fake", "--pairs", str(ROOT / "prompts" / "reference-pairs.jsonl"), "--out", str(lab),
                 "--limit", "24", "--quiet"]) == 0
    train = base / "dpo"
    train.mkdir()
    (train / "config.yaml").write_text("model: default\ndata: runs/demo\nname: dpo\nloss: sigmoid\nbeta: 0.1\n"
                                       "reference: precompute\nlr: 1.0e-06\nmax_steps: 20\n", encoding="utf-8")
    recs = [{"step": 0, "data/pairs": 100.0, "data/chosen_longer": 0.6}]
    for s in range(1, 21):
        recs.append({"step": s, "train/loss": 0.693 - 0.01 * s, "train/accuracy": min(1.0, 0.5 + 0.02 * s),
                     "train/margin": 0.02 * s, "train/reward_chosen": 0.01 * s, "train/reward_rejected": -0.01 * s,
                     "train/lr": 1e-6 * min(1.0, s / 4), "train/grad_norm": 1.0 / s, "epoch": 0.0})
        if s % 5 == 0:
            recs.append({"step": s, "eval/loss": 0.7 - 0.008 * s, "eval/accuracy": 0.5 + 0.01 * s})
    (train / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return [gen, lab, train]


def requests_made(d) -> list[str]:
    """URLs of every request the browser issued since the log was last read (DevTools
    Network.requestWillBeSent events from the performance log)."""
    urls = []
    for entry in d.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def test_report_in_headless_chromium(driver, trap, tmp_path):
    from selenium.webdriver.common.by import By

    runs = make_runs(tmp_path, trap)
    out = tmp_path / "report"
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    page = (out / "report.html").resolve().as_uri()

    driver.get_log("performance")  # start from an empty log
    driver.execute_cdp_cmd("Network.enable", {})
    driver.get(page)
    driver.find_element(By.ID, "comparison")
    state = driver.execute_script("return document.readyState")
    assert state == "complete"

    # every image decoded: complete, with a natural size
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.src.slice(0, 22)])")
    assert len(images) >= 10
    broken = [img for img in images if not (img[0] and img[1] > 0 and img[2] > 0)]
    assert not broken, broken
    assert {img[3] for img in images} == {"data:image/png;base64,"}

    # model text: shown as text, nothing of it ran or loaded
    assert driver.title.startswith("rlaif report")
    assert driver.execute_script("return document.scripts.length") == 0
    body = driver.find_element(By.TAG_NAME, "body").text
    assert '<script>document.title="pwned"</script>' in body
    assert f'<img src="{trap}/img.png">' in body
    assert not driver.execute_script(f"return document.querySelector('img[src^=\"{trap}\"], link[href^=\"{trap}\"]')")

    # open every <details> so that hidden images are laid out too, then a full-page screenshot
    driver.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 16000), "scale": 1}})
    png = base64.b64decode(shot["data"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    (tmp_path / "report.png").write_bytes(png)
    if os.environ.get("REPORT_SCREENSHOT"):
        Path(os.environ["REPORT_SCREENSHOT"]).write_bytes(png)
    top = driver.get_screenshot_as_png()  # the viewport, as a person first sees it
    if os.environ.get("REPORT_SCREENSHOT"):
        Path(os.environ["REPORT_SCREENSHOT"]).with_suffix(".top.png").write_bytes(top)

    images = driver.execute_script("return Array.from(document.images).map(i => i.naturalWidth)")
    assert all(w > 0 for w in images)

    # the only requests: the page itself and its embedded images
    urls = requests_made(driver)
    assert page in urls
    others = [u for u in urls if u != page and not u.startswith("data:")]
    assert not others, others
    assert Trap.hits == []

    # control: the same recorder and server do see a page that loads from the server, so the
    # empty lists above are the report's doing, not a blind instrument
    control = tmp_path / "control.html"
    control.write_text(f'<!doctype html><img src="{trap}/control.png">', encoding="utf-8")
    driver.get(control.resolve().as_uri())
    driver.execute_script("return document.readyState")
    assert f"{trap}/control.png" in requests_made(driver)
    assert "/control.png" in Trap.hits
