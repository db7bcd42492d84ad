"""Who may use the review server: the Host header (DNS rebinding) and, off loopback, the access secret.

Through the real command (``python -m rlaif review``) on 127.0.0.2 and on 0.0.0.0, and the
rules themselves through Starlette's test client. The browser side (the secret link opened in
Chromium, then the whole rating flow) is in test_review_browser.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

if os.environ.get("CI") != "true":  # under CI a missing package is a failure, not a skip
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")

import httpx  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from rlaif.review.app import create_app  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SECRET_TEXT = "a pair only reviewers may read"


def make_run(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    row = {"prompt": [{"role": "user", "content": "a question"}], "chosen": [{"role": "assistant", "content": SECRET_TEXT}],
           "rejected": [{"role": "assistant", "content": "the other answer"}], "id": "s1"}
    (path / "preferences.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    return path


def start(run: Path, *args: str):
    """``rlaif review RUN --port 0 ARGS``: the process, the printed URL and everything printed up to it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "rlaif", "review", str(run), "--port", "0", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, lines = time.monotonic() + 90, []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"review at (http://\S+)", line)
        if m:
            return proc, m.group(1), "".join(lines)
    proc.kill()
    raise AssertionError(f"no URL printed: {''.join(lines)}")


def stop(proc) -> str:
    proc.terminate()
    rest, _ = proc.communicate(timeout=20)
    return rest


def test_a_loopback_server_answers_its_address_and_localhost(tmp_path):
    """--host 127.0.0.2 used to answer 421 to everything (three fixed names); a foreign Host is refused."""
    proc, url, _ = start(make_run(tmp_path / "run"), "--host", "127.0.0.2")
    try:
        assert url.startswith("http://127.0.0.2:") and "secret" not in url  # loopback: no secret
        port = url.rstrip("/").rsplit(":", 1)[1]
        page = httpx.get(url + "pair/0?reviewer=ann")
        assert page.status_code == 200 and SECRET_TEXT in page.text
        for name in (f"localhost:{port}", "LOCALHOST"):
            assert httpx.get(url + "pair/0?reviewer=ann", headers={"host": name}).status_code == 200, name
        for name in (f"evil.example:{port}", "127.0.0.1", "review.test.evil.example"):
            refused = httpx.get(url + "pair/0?reviewer=ann", headers={"host": name})
            assert refused.status_code == 421 and SECRET_TEXT not in refused.text, name
    finally:
        stop(proc)


def test_off_loopback_every_request_needs_the_printed_secret(tmp_path):
    """--host 0.0.0.0: the secret is printed once, in the link; without it nothing is served and
    nothing is stored; the link sets a cookie and leaves the address bar; a rebound name is refused."""
    run = make_run(tmp_path / "run")
    proc, url, printed = start(run, "--host", "0.0.0.0")
    try:
        port = int(re.search(r":(\d+)/", url).group(1))
        base = f"http://127.0.0.1:{port}/"
        for path in ("", "pair/0?reviewer=ann", "api/stats", "api/token", "stats", "static/review.js", "?secret=guessed"):
            r = httpx.get(base + path)
            assert r.status_code == 403, (path, r.status_code)
            assert SECRET_TEXT not in r.text and "token" not in r.text and "needs its access link" in r.text
        r = httpx.post(base + "api/rate", json={"pair_id": "s1", "reviewer": "x", "rating": 1, "submission_id": "sub-nosecret"})
        assert r.status_code == 403
        assert not (run / "reviews.jsonl").exists()

        secret = re.search(r"\?secret=([\w-]+)", url).group(1)
        assert httpx.get(base + f"?secret={secret[:-1]}").status_code == 403
        opened = httpx.get(base + f"pair/0?secret={secret}&reviewer=ann")
        assert opened.status_code == 303 and opened.headers["location"] == "/pair/0?reviewer=ann"
        cookie = opened.headers["set-cookie"]
        assert secret in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        with httpx.Client(base_url=base, cookies=opened.cookies) as client:
            page = client.get("pair/0?reviewer=ann")
            assert page.status_code == 200 and SECRET_TEXT in page.text
            token = client.get("api/token").json()["token"]
            r = client.post("api/rate", json={"token": token, "pair_id": "s1", "reviewer": "ann", "rating": 2,
                                              "submission_id": "sub-withsecret"})
            assert r.status_code == 200 and (run / "reviews.jsonl").exists()
            # DNS rebinding: evil.example resolved to this machine; even with the cookie its name is refused
            rebound = client.get("pair/0?reviewer=ann", headers={"host": f"evil.example:{port}"})
            assert rebound.status_code == 421 and SECRET_TEXT not in rebound.text
    finally:
        rest = stop(proc)
    assert (printed + rest).count(secret) == 1  # printed once, in the link


def test_host_rules(tmp_path):
    from rlaif.review.access import Access, check_allowed_host

    run = make_run(tmp_path / "run")
    bound = Access("10.0.0.5", ("review.lan",), secret="s3cret")
    with TestClient(create_app(run, access=bound, log=lambda m: None), base_url="http://10.0.0.5:8765") as c:
        assert c.get("/?secret=s3cret", follow_redirects=False).status_code == 303
        assert c.get("/pair/0?reviewer=ann").status_code == 200  # the test client keeps the cookie
        assert c.get("/pair/0?reviewer=ann", headers={"host": "review.lan:8765"}).status_code == 200
        for name in ("10.0.0.6:8765", "localhost:8765", "evil.example", ""):
            assert c.get("/pair/0?reviewer=ann", headers={"host": name}).status_code == 421, name
    wildcard = Access("0.0.0.0", secret="s3cret")
    assert wildcard.host_ok("192.168.1.7:8765") and wildcard.host_ok("[fe80::1]:8765") and wildcard.host_ok("localhost")
    assert not wildcard.host_ok("evil.example:8765") and not wildcard.host_ok("192.168.1.7.evil.example")
    assert Access("localhost").host_ok("127.0.0.1:1") and Access("::1").host_ok("[::1]:1")
    assert Access.for_host("127.0.0.2").secret is None and Access.for_host("0.0.0.0").secret
    assert Access("a").cookie != Access("a", secret="other").cookie  # two servers keep their own cookie
    assert check_allowed_host(" Review.LAN ") == "review.lan" and check_allowed_host("fe80::1") == "fe80::1"
    for bad in ("http://review.lan/", "review.lan:80", "", "a b"):
        with pytest.raises(ValueError, match="--allowed-host takes a host name"):
            check_allowed_host(bad)


def test_cli_refuses_a_bad_allowed_host(tmp_path, capsys):
    from rlaif.cli import main

    assert main(["review", str(make_run(tmp_path / "run")), "--port", "0", "--allowed-host", "http://x/"]) == 2
    err = capsys.readouterr().err
    assert "rlaif: error: --allowed-host takes a host name" in err and "Traceback" not in err


def test_cli_passes_allowed_hosts_to_the_server(tmp_path, monkeypatch):
    import rlaif.review.server as server
    from rlaif.cli import main

    served = {}
    monkeypatch.setattr(server, "serve", lambda app, sock: served.setdefault("app", app))
    assert main(["review", str(make_run(tmp_path / "run")), "--port", "0", "--allowed-host", "Review.Test",
                 "--allowed-host", "10.1.2.3"]) == 0
    with TestClient(served["app"], base_url="http://review.test:8765") as c:
        assert c.get("/pair/0?reviewer=ann").status_code == 200
        assert c.get("/pair/0?reviewer=ann", headers={"host": "10.1.2.3"}).status_code == 200
        assert c.get("/pair/0?reviewer=ann", headers={"host": "other.test"}).status_code == 421
