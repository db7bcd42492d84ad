"""rlaif generate / label on Ray replicas: the same rows as one process, exactly once under faults.

A local Ray cluster is started once for this module (2 CPUs, a 200 MB object store, no
dashboard, its own temporary folder). The replicas run the fake engine, or a slow copy of it
that sleeps in every call and leaves a marker file with its process id, so that a test can kill
a replica in the middle of a chunk. The slow engine answers exactly as the fake engine does, so
every run can be compared row by row with a one-process run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

if os.environ.get("CI") != "true":  # under CI a missing package is a failure, not a skip
    pytest.importorskip("ray")
import ray  # noqa: E402

from rlaif.cli import main as cli  # noqa: E402
from rlaif.constitution import load_constitution  # noqa: E402
from rlaif.engine.fake import FakeEngine  # noqa: E402
from rlaif.pipeline.config import GenerateConfig  # noqa: E402
from rlaif.pipeline.distributed import DistributedError, RayConfig  # noqa: E402
from rlaif.pipeline.generate import generate  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = str(ROOT / "prompts" / "rlaif-prompts.jsonl")
# a loaded 2-core machine can take longer than Ray's defaults to start its agents; and other jobs'
# memory must not make Ray's memory monitor kill a replica that a test counts on (0: monitor off)
SLOW_START = {"RAY_agent_register_timeout_ms": "600000", "RAY_worker_register_timeout_seconds": "600",
              "RAY_raylet_start_wait_time_s": "600", "RAY_memory_monitor_refresh_ms": "0"}


@pytest.fixture(scope="module")
def cluster():
    from ray import cloudpickle  # Ray's own copy pickles what replicas receive

    for k, v in SLOW_START.items():
        os.environ.setdefault(k, v)
    tmp = tempfile.mkdtemp(prefix="rlaif-ray-")
    ray.init(num_cpus=2, object_store_memory=200 * 1024 * 1024, include_dashboard=False, _temp_dir=tmp,
             log_to_driver=False, configure_logging=False)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # replicas unpickle this module's engines by value
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


class SlowEngine(FakeEngine):
    """The fake engine's answers, after ``delay`` seconds per call; writes ``<marks>/<pid>`` first.

    With ``late_text``: the first call that sees ``late_text`` in a prompt (once per ``marks``
    folder, across processes) answers something else ("LATE ..."), a result that must never be
    committed, and only once chunk 1 has been committed from another lease (``run``); then it
    leaves ``<marks>/late-returned``. Calls that see ``gate_text`` wait for that file, so that the
    late result reaches the driver while the run is still going."""

    def __init__(self, marks: str, delay: float = 0.0, late_text: str | None = None, gate_text: str | None = None,
                 run: str | None = None):
        super().__init__()
        self.marks, self.delay, self.late_text, self.gate_text, self.run = Path(marks), delay, late_text, gate_text, run

    def generate(self, requests, sampling, desc=""):
        (self.marks / str(os.getpid())).touch()
        texts = [m["content"] for r in requests for m in r.messages]
        if self.late_text and any(self.late_text in t for t in texts):
            try:
                os.close(os.open(self.marks / "late-once", os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                _wait_for(Path(self.run) / "chunks" / "00000.jsonl")
                out = super().generate(requests, sampling, desc)
                (self.marks / "late-returned").touch()
                return [type(c)("LATE " + c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens) for c in out]
        if self.gate_text and any(self.gate_text in t for t in texts):
            _wait_for(self.marks / "late-returned")
        time.sleep(self.delay)
        return super().generate(requests, sampling, desc)


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline:
        time.sleep(0.02)


def _cfg(out: Path, ray_cfg: RayConfig | None = None, limit: int = 12, chunk: int = 2) -> GenerateConfig:
    from rlaif.pipeline.config import LabelConfig

    return GenerateConfig(prompts=PROMPTS, out=str(out), limit=limit, chunk_size=chunk, rounds=1, label=LabelConfig(enabled=True),
                          **({"ray": ray_cfg} if ray_cfg else {}))


def _one_process(tmp_path: Path, limit: int = 12, chunk: int = 2) -> Path:
    out = tmp_path / "one"
    generate(_cfg(out, limit=limit, chunk=chunk), load_constitution("default"), lambda: FakeEngine(), "fake-model",
             show_progress=False, log=lambda m: None)
    return out


def _rows(run: Path) -> dict[str, str]:
    """Every output a run folder holds that must not depend on where chunks ran."""
    out = {name: (run / name).read_text() for name in ("sft.jsonl", "preferences.jsonl", "failed.jsonl")}
    chunks = sorted((run / "chunks").glob("[0-9]*.jsonl"))
    out["chunks"] = "".join(p.name + p.read_text() for p in chunks)
    ids = [json.loads(line)["id"] for p in chunks if p.name.count(".") == 1 for line in p.read_text().splitlines()]
    assert len(ids) == len(set(ids)), "a row was committed twice"
    return out


def _run_in_thread(fn):
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def test_two_replicas_give_the_rows_of_one_process(cluster, tmp_path, capsys):
    base = ["--prompts", PROMPTS, "--limit", "14", "--chunk-size", "3", "--backend", "fake", "--label", "--quiet"]
    assert cli(["generate", *base, "--out", str(tmp_path / "one")]) == 0
    assert cli(["generate", *base, "--out", str(tmp_path / "ray"), "--ray", "--replicas", "2"]) == 0
    assert _rows(tmp_path / "ray") == _rows(tmp_path / "one")
    summary = json.loads((tmp_path / "ray" / "manifest.json").read_text())["engine"]["ray"]
    assert summary["chunks_committed"] == 5 and summary["leases"] == 5 and summary["leased_again"] == 0
    # a replica whose worker starts after the other has done every chunk is ended unstarted
    assert len(summary["replicas"]) == 2 and {r["state"] for r in summary["replicas"]} <= {"finished", "not started"}
    assert sum(r["chunks"] for r in summary["replicas"]) == 5
    assert sum(r["rows"] for r in summary["replicas"]) == 14
    busy = [r for r in summary["replicas"] if r["chunks"]]
    assert all(r["output_tokens"] > 0 and r["tokens_per_s"] > 0 for r in busy)
    printed = capsys.readouterr().out
    assert "replica" in printed and "tok/s" in printed

    # rlaif label the same way: the rows of a one-process run
    pairs = ["--pairs", str(ROOT / "prompts" / "reference-pairs.jsonl"), "--limit", "9", "--chunk-size", "2", "--backend", "fake", "--quiet"]
    assert cli(["label", *pairs, "--out", str(tmp_path / "l-one")]) == 0
    assert cli(["label", *pairs, "--out", str(tmp_path / "l-ray"), "--ray", "--replicas", "2"]) == 0
    for name in ("preferences.jsonl", "labels.jsonl"):
        assert (tmp_path / "l-ray" / name).read_text() == (tmp_path / "l-one" / name).read_text()
    assert json.loads((tmp_path / "l-ray" / "manifest.json").read_text())["engine"]["ray"]["chunks_committed"] == 5


def test_a_replica_killed_mid_chunk_leaves_no_hole_and_no_duplicate(cluster, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    cfg = _cfg(tmp_path / "ray", RayConfig(address="local", replicas=2), limit=16)
    factory = lambda: SlowEngine(str(marks), delay=0.25)  # noqa: E731
    t, box = _run_in_thread(lambda: generate(cfg, load_constitution("default"), factory, "fake-model",
                                             show_progress=False, log=lambda m: None))
    deadline = time.time() + 120
    while not list(marks.iterdir()) and time.time() < deadline and t.is_alive():
        time.sleep(0.02)
    assert "error" not in box, box.get("error")
    victim = int(next(marks.iterdir()).name)  # a replica inside its first engine call: mid-chunk
    os.kill(victim, signal.SIGKILL)
    t.join(300)
    assert not t.is_alive() and "error" not in box, box.get("error")
    summary = box["result"]["engine"]["ray"]
    assert _rows(tmp_path / "ray") == _rows(_one_process(tmp_path, limit=16))
    died = [r for r in summary["replicas"] if r["state"] == "died"]
    assert [r["pid"] for r in died] == [victim] and "died" in died[0]["error"].lower()
    assert summary["leased_again"] >= 1  # it held a chunk, which another replica finished
    assert len(summary["replicas"]) == 3  # and it was replaced
    assert summary["chunks_committed"] == 8 == sum(r["chunks"] for r in summary["replicas"])


def test_a_late_result_of_an_expired_lease_is_discarded(cluster, tmp_path):
    """Chunk 1's first lease outlives its 2 s; the chunk is leased again and committed, and the
    first lease's answer ("LATE ...") arrives afterwards, while the last chunk still waits for it."""
    marks = tmp_path / "marks"
    marks.mkdir()
    from rlaif.data.prompts import read_prompts

    prompts = read_prompts(PROMPTS, limit=24)
    cfg = _cfg(tmp_path / "ray", RayConfig(address="local", replicas=2, lease_timeout_s=2.0), limit=24)
    factory = lambda: SlowEngine(str(marks), delay=0.1, late_text=prompts[0].messages[-1]["content"],  # noqa: E731
                                 gate_text=prompts[-1].messages[-1]["content"], run=str(tmp_path / "ray"))
    logs: list[str] = []
    manifest = generate(cfg, load_constitution("default"), factory, "fake-model", show_progress=False, log=logs.append)
    summary = manifest["engine"]["ray"]
    # (on a loaded machine another chunk may outlive its lease too: its late result is discarded the same way)
    assert summary["expired"] >= 1 and summary["late_results_discarded"] >= 1, logs
    assert _rows(tmp_path / "ray") == _rows(_one_process(tmp_path, limit=24))  # no "LATE" text anywhere
    assert any("late result of chunk 1" in line and "discarded" in line for line in logs)
    stats = json.loads((tmp_path / "ray" / "chunks" / "00000.stats.json").read_text())
    assert stats["lease"] != "0.1"  # committed from a later lease


def _count_commits(monkeypatch) -> Counter:
    """Every commit of a chunk file in this process (the driver), by chunk index: a chunk committed
    twice rewrites the same file, so counting ids in the folder would not see it."""
    from rlaif.data.runs import RunDir

    counts: Counter = Counter()
    commit = RunDir.commit_chunk

    def counting(self, index, *args, **kwargs):
        counts[index] += 1
        return commit(self, index, *args, **kwargs)

    monkeypatch.setattr(RunDir, "commit_chunk", counting)
    return counts


def _finishes(fn, timeout: float = 120):
    """``fn()``'s result or error; fails if it is still running after ``timeout`` s (a driver that spins)."""
    t, box = _run_in_thread(fn)
    t.join(timeout)
    assert not t.is_alive(), f"still running after {timeout:g} s"
    return box


def test_a_lease_timeout_shorter_than_a_chunk_commits_each_chunk_once(cluster, tmp_path, monkeypatch):
    """One replica whose chunks take ~1.2 s against a 0.4 s lease: every lease expires, and since the
    replica is the only one, each late result comes back while no other lease holds its chunk: it is
    committed, once, and the chunk is not leased again."""
    marks = tmp_path / "marks"
    marks.mkdir()
    commits = _count_commits(monkeypatch)
    cfg = _cfg(tmp_path / "ray", RayConfig(address="local", replicas=1, lease_timeout_s=0.4), limit=6)
    logs: list[str] = []
    box = _finishes(lambda: generate(cfg, load_constitution("default"), lambda: SlowEngine(str(marks), delay=0.4),
                                     "fake-model", show_progress=False, log=logs.append))
    assert "error" not in box, box.get("error")
    assert commits == {0: 1, 1: 1, 2: 1}, logs
    summary = box["result"]["engine"]["ray"]
    assert summary["chunks_committed"] == 3 and summary["expired"] == 3 and summary["late_results_accepted"] == 3, logs
    assert summary["leases"] == 3  # a late result takes its chunk out of the queue
    commits.clear()
    assert _rows(tmp_path / "ray") == _rows(_one_process(tmp_path, limit=6))


class ScriptedJob:
    """A chunk job whose n-th lease of chunk i does ``script[i][n]`` (the last entry once the list runs
    out): ``(seconds, "ok")`` returns one row after sleeping, ``(seconds, "raise")`` raises after it.
    Attempts are numbered across processes by creating ``<marks>/<chunk>.<n>`` exclusively."""

    def __init__(self, marks: str, script: dict[int, list[tuple[float, str]]]):
        self.marks, self.script = Path(marks), script

    def start(self):
        return (None,)

    def describe(self, engines):
        return {}

    def close(self, engines):
        pass

    def run(self, engines, task):
        from rlaif.pipeline.distributed import ChunkResult

        n = 0
        while True:
            try:
                os.close(os.open(self.marks / f"{task.index}.{n}", os.O_CREAT | os.O_EXCL))
                break
            except FileExistsError:
                n += 1
        steps = self.script.get(task.index, [(0.0, "ok")])
        seconds, what = steps[min(n, len(steps) - 1)]
        time.sleep(seconds)
        if what == "raise":
            raise RuntimeError(f"attempt {n + 1} of chunk {task.index + 1} failed")
        return ChunkResult(rows=[{"id": f"c{task.index}"}], stats={"attempt": n + 1})


def _scripted(tmp_path, script, ray_cfg):
    from rlaif.pipeline.distributed import ChunkTask, run_chunks

    marks = tmp_path / "marks"
    marks.mkdir()
    commits: list[tuple[int, str]] = []
    logs: list[str] = []
    tasks = [ChunkTask(i, [f"p{i}"]) for i in range(2)]
    box = _finishes(lambda: run_chunks(ScriptedJob(str(marks), script), tasks,
                                       lambda task, result: commits.append((task.index, result.stats["lease"])),
                                       ray_cfg, log=logs.append))
    return box, commits, logs


def test_an_expired_lease_that_raises_is_counted_once(cluster, tmp_path):
    """Chunk 1's first two leases outlive the lease and then raise; its third outlives it and returns.
    Each of the three counts once against max_attempts 4 (an expiry, not an expiry and an error), so
    the third lease's late result, with no other lease on the chunk, is committed."""
    slow_error, slow_ok = (1.2, "raise"), (1.2, "ok")
    box, commits, logs = _scripted(tmp_path, {0: [slow_error, slow_error, slow_ok]},
                                   RayConfig(address="local", replicas=1, lease_timeout_s=0.4, max_attempts=4))
    assert "error" not in box, (box.get("error"), logs)
    assert sorted(commits) == [(0, "0.3"), (1, "1.1")], logs
    summary = box["result"]["ray"]
    assert summary["expired"] == 3 and summary["late_results_accepted"] == 1
    assert summary["replicas"][0]["failures"] == 2
    assert sum("expired before" in line for line in logs) == 2, logs


def test_leases_that_keep_expiring_stop_the_run(cluster, tmp_path):
    """Two replicas, chunk 1 never done within the lease: its second expired lease stops the run with
    one clear message instead of leasing it for ever."""
    box, commits, logs = _scripted(tmp_path, {0: [(60.0, "ok")]},
                                   RayConfig(address="local", replicas=2, lease_timeout_s=0.4, max_attempts=2))
    error = box.get("error")
    assert isinstance(error, DistributedError), (error, logs)
    assert "chunk 1 failed 2 times (max_attempts 2): lease 0.2 expired after 0.4 s" in str(error)
    assert "run the same command again" in str(error)
    assert 0 not in {i for i, _ in commits}


def test_a_replica_that_fails_to_start_is_reported_and_the_others_go_on(cluster, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()

    def factory():
        try:  # the first replica to start fails
            os.close(os.open(marks / "failed-once", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return FakeEngine()
        raise RuntimeError("no such model: /models/missing")

    logs: list[str] = []
    manifest = generate(_cfg(tmp_path / "ray", RayConfig(address="local", replicas=2)), load_constitution("default"),
                        factory, "fake-model", show_progress=False, log=logs.append)
    states = {r["state"]: r for r in manifest["engine"]["ray"]["replicas"]}
    assert set(states) == {"failed to start", "finished"}
    assert "RuntimeError: no such model: /models/missing" in states["failed to start"]["error"]
    assert any("failed to start: RuntimeError: no such model" in line for line in logs)
    assert _rows(tmp_path / "ray") == _rows(_one_process(tmp_path))


def test_no_replica_left_stops_cleanly(cluster, tmp_path, capsys):
    def factory():
        raise RuntimeError("out of memory while loading")

    with pytest.raises(DistributedError, match="no replica is left.*out of memory while loading.*run the same command again"):
        generate(_cfg(tmp_path / "ray", RayConfig(address="local", replicas=2)), load_constitution("default"),
                 factory, "fake-model", show_progress=False, log=lambda m: None)
    assert not list((tmp_path / "ray" / "chunks").glob("*.jsonl"))


def test_a_killed_driver_resumes(cluster, tmp_path):
    """The driver (the command) is killed with kill -9 between or during commits; the same command
    run again commits only the missing chunks, and the result equals a one-process run."""
    out = tmp_path / "ray"
    args = ["generate", "--prompts", PROMPTS, "--limit", "16", "--chunk-size", "2", "--rounds", "1", "--label",
            "--backend", "fake", "--quiet", "--out", str(out), "--ray", cluster, "--replicas", "2"]
    # the first driver commits slowly, so that it dies with part of the chunks committed
    slow = ("import sys, time, rlaif.data.runs as r; c = r.RunDir.commit_chunk\n"
            "r.RunDir.commit_chunk = lambda self, *a, **k: (time.sleep(0.4), c(self, *a, **k))[1]\n"
            "from rlaif.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, **SLOW_START, "RLAIF_REPORT": "0"}
    proc = subprocess.Popen([sys.executable, "-c", slow, *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while len(list((out / "chunks").glob("[0-9]*[0-9].jsonl"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(list((out / "chunks").glob("[0-9]*[0-9].jsonl")))
    assert 2 <= before < 8, before
    again = subprocess.run([sys.executable, "-m", "rlaif", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming {out}: {before} of 8 chunks already committed" in again.stdout + again.stderr
    summary = json.loads((out / "manifest.json").read_text())["engine"]["ray"]
    assert summary["chunks_committed"] == 8 - before
    one = [a if a != str(out) else str(tmp_path / "one") for a in args[: args.index("--ray")]]
    assert cli(one) == 0
    assert _rows(out) == _rows(tmp_path / "one")


def test_replicas_as_clients_of_served_models(cluster, tmp_path):
    """--backend openai --ray: each replica is a client of the servers (policy and judge on their own
    loopback servers); every request is made exactly once across the replicas, the rows are those of
    one process, and each row names the model the judge's server reported."""
    from fixtures_server import OracleServer

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Question {i}: something {'odd' if i % 2 else 'even'}."}) + "\n"
                               for i in range(8)))
    with OracleServer(("policy-x",)) as policy, OracleServer(("judge-z",), reports={"judge-z": "judge-z@2"}) as judge:
        base = ["generate", "--prompts", str(prompts), "--rounds", "1", "--chunk-size", "2", "--label", "--ensemble", "2",
                "--backend", "openai", "--base-url", policy.url, "--feedback-base-url", judge.url, "--quiet"]
        assert cli([*base, "--out", str(tmp_path / "one")]) == 0
        one = (len(policy.requests("generate")), len(judge.requests("score")))
        assert cli([*base, "--out", str(tmp_path / "ray"), "--ray", "--replicas", "2"]) == 0
        both = (len(policy.requests("generate")), len(judge.requests("score")))
    assert one == (8 * 3, 8 * 2 * 2) and both == (2 * one[0], 2 * one[1])  # the Ray run made exactly one run's requests
    assert _rows(tmp_path / "ray") == _rows(tmp_path / "one")
    prefs = [json.loads(line) for line in (tmp_path / "ray" / "preferences.jsonl").read_text().splitlines()]
    assert len(prefs) == 8 and {r["feedback_model"] for r in prefs} == {"judge-z@2"}
    assert json.loads((tmp_path / "ray" / "manifest.json").read_text())["engine"]["ray"]["chunks_committed"] == 4

    # rlaif label the same way, its judge a client of the judge's server in each replica
    pairs = ["label", "--pairs", str(ROOT / "prompts" / "reference-pairs.jsonl"), "--limit", "6", "--chunk-size", "2",
             "--backend", "openai", "--quiet"]
    with OracleServer(("judge-z",)) as judge:
        assert cli([*pairs, "--base-url", judge.url, "--out", str(tmp_path / "l-one")]) == 0
        assert cli([*pairs, "--base-url", judge.url, "--out", str(tmp_path / "l-ray"), "--ray", "--replicas", "2"]) == 0
        assert len(judge.requests("score")) == 2 * 6 * 4 * 2  # two runs, 6 pairs, 4 principles, 2 orders
    for name in ("preferences.jsonl", "labels.jsonl"):
        assert (tmp_path / "l-ray" / name).read_text() == (tmp_path / "l-one" / name).read_text()



def test_replicas_record_failed_requests_and_a_server_gone_stops_the_driver(cluster, tmp_path, capsys):
    """rlaif label --ray against a server that answers 500 to the requests about two pairs: the
    replicas record those labels as failed for now, the driver commits them and the run exits with
    status 4. The server then answers 500 to everything: a replica's engine stops (3 in a row here)
    and the driver stops the run with the same status and one line. Against the server restarted on
    the same port the run completes, asking only for the two pairs, with the files of a run that never failed."""
    from fixtures_server import FaultyOracle, OracleServer
    from test_cli_backends import write_pairs

    from rlaif.engine.failures import FAILED_EXIT

    pairs = write_pairs(tmp_path, 8)
    broken = ("Question 3?", "Question 5?")
    fails = lambda body: any(q in m["content"] for m in body.get("messages", ()) for q in broken)  # noqa: E731
    base = ["label", "--pairs", str(pairs), "--chunk-size", "2", "--ensemble", "2", "--backend", "openai", "--max-retries", "1",
            "--request-timeout", "1", "--quiet"]
    ray_run = [*base, "--out", str(tmp_path / "ray"), "--ray", "--replicas", "2"]
    with FaultyOracle("500", fail=fails) as bad:
        assert cli([*ray_run, "--base-url", bad.url]) == FAILED_EXIT
        port = bad.port
    assert "missing 2 of 8 pairs (2 failed for now" in capsys.readouterr().err
    labels = [json.loads(line) for p in sorted((tmp_path / "ray" / "chunks").glob("[0-9]*[0-9].jsonl")) for line in p.read_text().splitlines()]
    assert sorted(r["pair_id"] for r in labels if r["error"] and r["retryable"]) == ["x3", "x5"]
    with FaultyOracle("500", port=port) as dead:
        assert cli([*ray_run, "--base-url", dead.url, "--max-consecutive-failures", "3"]) == FAILED_EXIT
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rlaif:")]
    assert len(lines) == 1 and lines[0].startswith("rlaif: stopped early:") and "3 requests in a row" in lines[0]
    with OracleServer(port=port) as good:
        assert cli([*ray_run, "--base-url", good.url]) == 0
        assert len(good.requests("score")) == 2 * 2 * 2
    with OracleServer() as fresh:
        assert cli([*base, "--out", str(tmp_path / "one"), "--base-url", fresh.url]) == 0
    for name in ("preferences.jsonl", "labels.jsonl"):
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "one" / name).read_text()

def test_ray_settings_are_checked_and_left_out_of_the_fingerprint(tmp_path):
    with pytest.raises(ValueError, match="replicas must be >= 1"):
        RayConfig(address="local", replicas=0)
    assert cli(["generate", "--prompts", PROMPTS, "--limit", "2", "--backend", "fake", "--quiet", "--out", str(tmp_path / "r"),
                "--lease-timeout", "-1", "--ray"]) == 2
    from rlaif.pipeline.config import resolve
    from rlaif.pipeline.generate import run_settings
    from rlaif.data.prompts import read_prompts

    const = load_constitution("default")
    one = resolve({}, {"prompts": PROMPTS, "out": "x"}, const.defaults)
    on_ray = resolve({"ray": {"replicas": 4}}, {"prompts": PROMPTS, "out": "x", "ray.address": "auto"}, const.defaults)
    assert on_ray.ray == RayConfig(address="auto", replicas=4)
    prompts = read_prompts(PROMPTS, limit=2)
    # a folder begun on Ray resumes in one process and the other way round
    assert run_settings(one, const, prompts, "m") == run_settings(on_ray, const, prompts, "m")


class _Borrowed:
    """Lends the session's vLLM engine to generate() without letting it close it."""

    def __init__(self, engine):
        self._engine, self.model = engine, engine.model

    def generate(self, *a, **k):
        return self._engine.generate(*a, **k)

    def score_options(self, *a, **k):
        return self._engine.score_options(*a, **k)

    def info(self):
        return self._engine.info()

    def close(self):
        pass


@pytest.mark.vllm
def test_vllm_replica_gives_the_rows_of_one_process(cluster, default_model, tmp_path, request):
    """The default model through in-process vLLM inside a Ray replica (one: two vLLM engines do not
    fit beside the test suite on the 2-core machine), against the session's vLLM engine in this
    process; both in float32, so that the texts can be compared exactly."""
    from rlaif.cli.engines import make_engine_factory
    from rlaif.engine.base import SamplingConfig
    from rlaif.engine.config import EngineConfig

    short = {s: SamplingConfig(temperature=0.7, top_p=0.95, max_tokens=32) for s in ("response", "critique", "revision")}

    def cfg(out, ray_cfg=None):
        return GenerateConfig(prompts=PROMPTS, out=str(out), limit=4, chunk_size=2, rounds=1, sampling=short,
                              **({"ray": ray_cfg} if ray_cfg else {}))

    const = load_constitution("default")
    factory = make_engine_factory(EngineConfig(dtype="float32", max_model_len=4096, kv_cache_gib=0.5), default_model, 0, True)
    on_ray = generate(cfg(tmp_path / "ray", RayConfig(address="local", replicas=1, cpus_per_replica=2)), const, factory,
                      default_model, show_progress=False, log=lambda m: None)
    engine = request.getfixturevalue("vllm_engine")  # started only now: the replica's engine has been closed
    generate(cfg(tmp_path / "one"), const, lambda: _Borrowed(engine), default_model, show_progress=False, log=lambda m: None)
    assert _rows(tmp_path / "ray") == _rows(tmp_path / "one")
    replica = on_ray["engine"]["ray"]["replicas"][0]
    assert replica["state"] == "finished" and replica["chunks"] == 2 and replica["output_tokens"] > 0
    assert on_ray["engine"]["backend"] == "VLLMEngine"  # the manifest describes the replica's own engine
