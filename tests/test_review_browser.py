"""rlaif review in a real headless browser: Debian's chromium driven by Selenium through
chromedriver (scripts/setup_browser.sh installs both; `make test` runs it first).

Outside CI these tests skip, with the reason, where the browser is missing; under CI
(CI=true) they fail instead, so a CI run can never pass without them.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

if os.environ.get("CI") != "true":  # under CI a missing package is a failure, not a skip
    pytest.importorskip("starlette")

from browser import start_chromium  # noqa: E402
from rlaif.review.access import Access  # noqa: E402
from rlaif.review.app import create_app  # noqa: E402
from rlaif.review.server import BackgroundServer  # noqa: E402


@pytest.fixture(scope="module")
def driver():
    d = start_chromium(width=1400)
    yield d
    d.quit()


def make_run(path: Path, rows) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "preferences.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def row(pid, chosen, rejected, prompt="a question", **label):
    return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "id": pid, **label}


def stored(run: Path) -> list[dict]:
    path = run / "reviews.jsonl"
    return [json.loads(x) for x in path.read_text(encoding="utf-8").split("\n") if x] if path.exists() else []


def wait(cond, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = cond()
        except Exception:  # an element replaced while the page changes: look again
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def by_id(d, element_id):
    from selenium.webdriver.common.by import By

    return d.find_element(By.ID, element_id)


def press(d, keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(d).send_keys(keys).perform()


def rating_for(prefer_chosen: bool, left_chosen: bool, strong: bool = True) -> int:
    """The number a person presses: 1 = left much better ... 8 = right much better."""
    left_better = prefer_chosen == left_chosen
    return (1 if strong else 3) if left_better else (8 if strong else 6)


def agreement_row(d, row_id: str) -> tuple[str, str]:
    from selenium.webdriver.common.by import By

    cells = d.find_elements(By.CSS_SELECTOR, f"#{row_id} td")
    return cells[1].text, cells[2].text


@pytest.fixture
def three_pairs(driver, tmp_path):
    """Three labelled pairs behind a server that asks for its access secret (as off loopback): the
    browser opens the link with the secret first, as a reviewer opens the printed one."""
    run = make_run(tmp_path / "run", [
        row("pa", "Alpha chosen", "Alpha rejected", category="c1", chosen_prob=0.9, order_agreement=1.0, label_principles=["x"], label_principle_probs=[0.9]),
        row("pb", "Beta chosen", "Beta rejected", category="c1", chosen_prob=0.6, order_agreement=0.0, label_principles=["x"], label_principle_probs=[0.6]),
        row("pc", "Gamma chosen", "Gamma rejected", category="c2", chosen_prob=0.75, order_agreement=1.0, label_principles=["y"], label_principle_probs=[0.75]),
    ])
    access = Access(secret=secrets.token_urlsafe(24))
    server = BackgroundServer(create_app(run, access=access, log=lambda m: None, order="file")).start()  # the file's order: pair 1, 2, 3
    driver.get(access.link(server.url))
    # redirected to the address without the secret (then to a pair, where a reviewer cookie is left from before)
    wait(lambda: driver.current_url.startswith(server.url) and "secret" not in driver.current_url, "the plain address")
    assert "refused" not in driver.find_element("tag name", "body").text
    yield run, server
    server.stop()


def test_rate_with_mouse_and_keys_reload_and_read_the_numbers(driver, three_pairs):
    run, server = three_pairs
    d = driver
    d.get(server.url + "?reviewer=alice")
    wait(lambda: d.current_url.endswith("/pair/0"), "the first pair")
    # Pair A with the mouse: the chosen response much better, then a comment and a flag.
    left_a = by_id(d, "left-text").text
    assert left_a in ("Alpha chosen", "Alpha rejected") and by_id(d, "right-text").text != left_a
    lc_a = left_a == "Alpha chosen"
    by_id(d, f"rate-{rating_for(True, lc_a)}").click()
    wait(lambda: len(stored(run)) == 1 and by_id(d, "status").get_attribute("data-state") == "saved", "the first rating")
    by_id(d, "comment").send_keys("too vague <b>not bold</b>")
    rejected_side = "right" if lc_a else "left"
    by_id(d, f"flag-{rejected_side}-wrong").click()  # leaving the comment box stores the comment, the flag stores again
    wait(lambda: len(stored(run)) == 3 and by_id(d, "status").get_attribute("data-state") == "saved", "comment and flag stored")
    # Pair B with the keyboard: n, then the rejected response much better.
    press(d, "n")
    wait(lambda: d.current_url.endswith("/pair/1"), "pair 2 after n")
    lc_b = by_id(d, "left-text").text == "Beta chosen"
    key_b = rating_for(False, lc_b)
    press(d, str(key_b))
    wait(lambda: len(stored(run)) == 4, "the rating of pair 2")
    press(d, "n")
    wait(lambda: d.current_url.endswith("/pair/2"), "pair 3 after n")
    lc_c = by_id(d, "left-text").text == "Gamma chosen"
    press(d, str(rating_for(True, lc_c, strong=False)))
    wait(lambda: len(stored(run)) == 5 and by_id(d, "stats-body").get_attribute("data-ratings") == "3", "the numbers after 3 ratings")

    # The numbers, worked out by hand: A agrees, B disagrees, C agrees -> 2 of 3;
    # the AI's orders agreed on A and C (both agree) and disagreed on B (disagrees).
    assert agreement_row(d, "agree-overall") == ("3", "66.7%")
    assert agreement_row(d, "agree-orders-agreed") == ("2", "100.0%")
    assert agreement_row(d, "agree-orders-disagreed") == ("1", "0.0%")
    assert by_id(d, "stat-reviewed").text == "3"

    # Back with p; a reload shows the same order and the stored rating.
    press(d, "p")
    wait(lambda: d.current_url.endswith("/pair/1"), "pair 2 after p")
    d.refresh()
    wait(lambda: by_id(d, "left-text").text == ("Beta chosen" if lc_b else "Beta rejected"), "the same order after a reload")
    assert "selected" in by_id(d, f"rate-{key_b}").get_attribute("class")
    assert by_id(d, "status").get_attribute("data-state") == "saved"

    rows = stored(run)
    assert len({r["submission_id"] for r in rows}) == 5 and {r["reviewer"] for r in rows} == {"alice"}
    latest = {r["pair_id"]: r for r in rows}
    assert (latest["pa"]["likert"], latest["pa"]["prefers"]) == (8, "chosen")
    assert latest["pa"]["flags"] == {"chosen": [], "rejected": ["wrong"]}
    assert latest["pa"]["comment"] == "too vague <b>not bold</b>"
    assert (latest["pb"]["likert"], latest["pb"]["prefers"]) == (1, "rejected")
    assert (latest["pc"]["likert"], latest["pc"]["prefers"]) == (6, "chosen")

    # A second tab rates pair B again: one more line, still one rating of B that counts.
    first = d.current_window_handle
    d.switch_to.new_window("tab")
    try:
        d.get(server.url + "pair/1")  # the reviewer cookie carries over
        assert by_id(d, "reviewer-name").text == "alice"
        press(d, str(rating_for(True, lc_b)))
        wait(lambda: len(stored(run)) == 6 and by_id(d, "status").get_attribute("data-state") == "saved", "the second tab's rating")
        wait(lambda: agreement_row(d, "agree-overall") == ("3", "100.0%"), "the latest rating counting")
    finally:
        d.close()
        d.switch_to.window(first)


def test_model_text_with_html_and_script_renders_as_text(driver, tmp_path):
    evil = '<script>window.__pwned = 1</script><b>bold?</b> & "quotes"'
    prompt = '<img src=x onerror="window.__pwned = 2">hello'
    run = make_run(tmp_path / "run", [row("e1", evil, "</div><div id=\"forged\">forged</div>", prompt=prompt,
                                          category="<i>cat</i>", chosen_prob=0.7, order_agreement=1.0)])
    from selenium.webdriver.common.by import By

    with BackgroundServer(create_app(run, log=lambda m: None)) as server:
        driver.get(server.url + "pair/0?reviewer=eve")
        texts = {by_id(driver, "left-text").text, by_id(driver, "right-text").text}
        assert texts == {evil, '</div><div id="forged">forged</div>'}
        assert prompt in driver.find_element(By.CSS_SELECTOR, ".conversation").text
        assert driver.execute_script("return window.__pwned === undefined")
        assert not driver.find_elements(By.CSS_SELECTOR, "#left-text *, #right-text *, .conversation img, #forged")
        press(driver, "5")  # the statistics panel is then replaced by script: still escaped
        wait(lambda: by_id(driver, "stats-body").get_attribute("data-ratings") == "1", "the numbers")
        assert "<i>cat</i>" in by_id(driver, "agree-category").text
        assert not driver.find_elements(By.CSS_SELECTOR, "#stats i")
        assert driver.execute_script("return window.__pwned === undefined")


class _EvilPage(BaseHTTPRequestHandler):
    """Another site's page (another origin) that tries to post ratings into the review server."""

    target = ""

    def do_GET(self):  # noqa: N802
        html = f"""<!doctype html><title>evil</title><body>
<form id="f" method="post" action="{self.target}rate">
<input name="pair_id" value="pa"><input name="reviewer" value="mallory"><input name="rating" value="8">
<input name="submission_id" value="evil-000001"></form>
<script>
window.fetchResult = "pending";
fetch("{self.target}api/rate", {{method: "POST", headers: {{"Content-Type": "application/json"}},
  body: JSON.stringify({{pair_id: "pa", reviewer: "mallory", rating: 8, submission_id: "evil-000002"}})}})
  .then(r => {{ window.fetchResult = "sent " + r.status; }}, e => {{ window.fetchResult = "blocked"; }});
</script></body>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(html)))
        self.end_headers()
        self.wfile.write(html)

    def log_message(self, *args):
        pass


def test_hostile_posts_are_refused(driver, three_pairs):
    run, server = three_pairs
    d = driver
    # 1. Another site's page posts a form and a script request into the local server.
    _EvilPage.target = server.url
    evil = ThreadingHTTPServer(("127.0.0.1", 0), _EvilPage)
    thread = threading.Thread(target=evil.serve_forever, daemon=True)
    thread.start()
    try:
        d.get(f"http://127.0.0.1:{evil.server_address[1]}/")
        wait(lambda: d.execute_script("return window.fetchResult") != "pending", "the cross-site request")
        assert d.execute_script("return window.fetchResult") == "blocked"  # no CORS: the browser never sends it
        d.execute_script("document.getElementById('f').submit()")
        wait(lambda: d.current_url.startswith(server.url), "the cross-site form post")
        assert "cross-origin post" in d.find_element("tag name", "body").text
    finally:
        evil.shutdown()
        evil.server_close()
    assert stored(run) == []

    # 2. The real page with its token, but bad values: refused with a clear message.
    d.get(server.url + "pair/0?reviewer=alice")
    post = """const [body, done] = [arguments[0], arguments[arguments.length - 1]];
      body.token = document.querySelector('input[name=token]').value;
      fetch('/api/rate', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)})
        .then(r => r.json().then(j => done([r.status, j.error])));"""
    base = {"pair_id": "pa", "reviewer": "alice", "rating": 4, "submission_id": "hostile-01"}
    for over, status, message in [({"rating": 9}, 422, "rating must be a whole number from 1 to 8"),
                                  ({"rating": 0}, 422, "rating must be"),
                                  ({"rating": "1e3"}, 422, "rating must be"),
                                  ({"pair_id": "nope"}, 404, "unknown pair id 'nope'"),
                                  ({"flags_left": ["pwned"]}, 422, "flags_left must be a list of")]:
        got_status, error = d.execute_async_script(post, {**base, **over})
        assert got_status == status and message in error, (over, got_status, error)
    # 3. A page whose hidden fields were tampered with: the reviewer sees why nothing was stored.
    d.execute_script("document.querySelector('input[name=pair_id]').value = 'nope'")
    press(d, "3")
    wait(lambda: by_id(d, "status").get_attribute("data-state") == "error", "the refusal shown")
    assert "unknown pair id 'nope'" in by_id(d, "status").text
    assert stored(run) == []


def test_a_restarted_server_loses_and_duplicates_nothing(driver, tmp_path):
    run = make_run(tmp_path / "run", [row("r1", "one", "two", chosen_prob=0.8, order_agreement=1.0)])
    first = BackgroundServer(create_app(run, log=lambda m: None)).start()
    port = int(first.url.rstrip("/").rsplit(":", 1)[1])
    driver.get(first.url + "pair/0?reviewer=rob")
    first.stop()  # the server goes away while the page is open
    press(driver, "2")  # the page retries the same submission until a server answers
    time.sleep(0.3)
    second = BackgroundServer(create_app(run, log=lambda m: None), port=port).start()  # a new token, too
    try:
        wait(lambda: by_id(driver, "status").get_attribute("data-state") == "saved", "the rating stored after the restart", timeout=30)
        rows = stored(run)
        assert len(rows) == 1 and rows[0]["rating_shown"] == 2 and rows[0]["reviewer"] == "rob"
        driver.refresh()
        assert "selected" in by_id(driver, "rate-2").get_attribute("class")
        assert len(stored(run)) == 1
    finally:
        second.stop()


def test_a_session_in_queue_order_until_the_stop_banner(driver, tmp_path):
    """A person types a name, rates with the keys in the queue's order (the pairs whose AI orders
    disagreed first, every other pair from the random sample), reads the estimate with its
    interval, steps back with p, and rates on until the page says the interval is narrow enough."""
    from rlaif.review.queue import in_random_stratum

    rows, hard = [], set()
    for i in range(30):
        disagreed = i % 5 == 0
        if disagreed:
            hard.add(f"q{i}")
        rows.append(row(f"q{i}", f"Better answer {i}", f"Worse answer {i}", chosen_prob=0.8 if disagreed else 0.6,
                        order_agreement=0.0 if disagreed else 1.0, label_principles=["x"], label_principle_probs=[0.8]))
    run = make_run(tmp_path / "run", rows)
    informative_hard = sorted((p for p in hard if not in_random_stratum(p)), key=lambda p: int(p[1:]))
    assert informative_hard, "the test needs an order-disagreed pair outside the random sample"
    d = driver
    with BackgroundServer(create_app(run, log=lambda m: None, target=0.3)) as server:
        d.get(server.url)
        d.delete_all_cookies()  # a new person at this browser: the other tests' reviewer names are gone
        d.get(server.url)
        by_id(d, "reviewer-input").send_keys("pat\n")
        wait(lambda: "/pair/" in d.current_url, "the first pair")
        assert by_id(d, "order-name").text == "queue order"
        seen = []
        for k in range(16):
            pid = by_id(d, "pair-id").text
            if k == 0:
                assert pid in informative_hard  # the queue starts with a pair whose orders disagreed
            seen.append(pid)
            left_better = by_id(d, "left-text").text.startswith("Better")
            press(d, "2" if left_better else "7")  # the better answer, always
            wait(lambda: len(stored(run)) == k + 1 and by_id(d, "stats-body").get_attribute("data-ratings") == str(k + 1),
                 f"rating {k + 1} stored and counted")
            if k == 1:
                assert by_id(d, "estimate").get_attribute("data-n") == "1"
                press(d, "p")  # back to the pair rated before this one
                wait(lambda: by_id(d, "pair-id").text == seen[0], "the previous pair after p")
                press(d, "n")
                wait(lambda: by_id(d, "pair-id").text not in seen, "the next pair of the queue after n")
                continue
            if by_id(d, "estimate").get_attribute("data-met") == "yes":
                break
            press(d, "n")
            wait(lambda: by_id(d, "pair-id").text not in seen, "the next pair of the queue")
        assert len(set(seen)) == len(seen)
        informative_seen = [p for p in seen if not in_random_stratum(p)]
        n_first = min(len(informative_hard), len(informative_seen))
        assert set(informative_seen[:n_first]) == set(informative_hard[:n_first])
        banner = by_id(d, "stop-banner").text
        assert "Enough ratings" in banner and "30 points" in banner
        n_random = sum(in_random_stratum(p) for p in seen)
        assert by_id(d, "estimate").get_attribute("data-n") == str(n_random)
        assert by_id(d, "estimate-rate").text == "100.0%"  # every rating chose the AI's choice, the better answer
