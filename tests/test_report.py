"""rlaif report: its numbers against hand computations, the run folders it reads (made by the
fake engine, and a real tiny training run), the HTML it writes, and its errors."""

from __future__ import annotations

import base64
import importlib.util
import json
import math
import os
import shutil
import struct
from html.parser import HTMLParser
from pathlib import Path

import pytest

if os.environ.get("CI") != "true":  # under CI a missing package is a failure, not a skip
    pytest.importorskip("jinja2")
    pytest.importorskip("matplotlib")

from rlaif.cli import main  # noqa: E402
from rlaif.report import ReportError, build_report, numbers, refresh  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = '<script>alert("x")</script><img src="http://127.0.0.1:9/leak.png"> & <b>bold</b>'


# ------------------------------------------------------------------ run folders (fake engine)


def write_prompts(path: Path) -> Path:
    rows = [
        {"id": "h1", "prompt": HOSTILE, "category": "hostile"},
        {"id": "p1", "prompt": "How do I boil an egg?", "category": "cooking"},
        {"id": "p2", "prompt": "Name three prime numbers.", "category": "maths"},
        {"id": "p3", "prompt": "What is the capital of France?", "category": "geography"},
        {"id": "p4", "prompt": "Give me a synonym for happy.", "category": "language"},
        {"id": "p5", "prompt": "How far is the Moon?", "category": "science"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A generate --label run (2 rounds), a label run and a training run folder."""
    base = tmp_path_factory.mktemp("report-runs")
    prompts = write_prompts(base / "prompts.jsonl")
    gen = base / "gen"
    assert main(["generate", "--backend", "fake", "--prompts", str(prompts), "--out", str(gen), "--rounds", "2",
                 "--label", "--quiet"]) == 0
    lab = base / "lab"
    assert main(["label", "--backend", "fake", "--pairs", str(ROOT / "prompts" / "reference-pairs.jsonl"),
                 "--out", str(lab), "--limit", "12", "--quiet"]) == 0
    return {"gen": gen, "lab": lab, "train": write_train_run(base / "dpo-run")}


def write_train_run(path: Path, records=None, torn_tail: bool = False) -> Path:
    """A training run folder as rlaif train writes it: config.yaml and metrics.jsonl records
    {"step": N, "<split>/<metric>": value, ...} (the data/ record at step 0)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text("model: tiny\ndata: runs/demo\nname: dpo-run\nloss: sigmoid\nbeta: 0.1\n"
                                      "reference: precompute\nlr: 0.001\nmax_steps: 4\n", encoding="utf-8")
    if records is None:
        records = [{"step": 0, "data/pairs": 40.0, "data/chosen_longer": 0.5}]
        for s in range(1, 5):
            records.append({"step": s, "train/loss": 0.7 - 0.05 * s, "train/accuracy": 0.25 * s, "train/lr": 1e-3 / s,
                            "train/margin": 0.1 * s, "train/grad_norm": 1.0 + s, "epoch": 0.0})
        records.append({"step": 4, "eval/loss": 0.61, "eval/accuracy": 0.75})
    text = "".join(json.dumps(r) + "\n" for r in records)
    if torn_tail:
        text += '{"step": 5, "train/lo'
    (path / "metrics.jsonl").write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ numbers, by hand


def traj(status, initial, revisions, principles=None, category=None):
    principles = principles or [f"p{i}" for i in range(len(revisions))]
    return {
        "status": status,
        "initial": {"text": initial},
        "rounds": [{"principle_id": p, "critique": {"request": "c", "text": "crit"}, "revision": {"request": "r", "text": r}}
                   for p, r in zip(principles, revisions)],
        "meta": {"category": category} if category else {},
    }


def test_principle_usage_counts_rounds_and_expected_shares():
    trajs = [traj("ok", "x", ["a", "b"], ["alpha", "beta"]), traj("ok", "y", ["c"], ["alpha"]),
             traj("failed", "z", ["d"], ["beta"])]  # a failed conversation's finished rounds were still run
    rows = numbers.principle_usage(trajs, {"alpha": 1.0, "beta": 3.0, "gamma": 1.0})
    assert [r["principle"] for r in rows] == ["alpha", "beta", "gamma"]
    alpha, beta, gamma = rows
    assert (alpha["rounds"], beta["rounds"], gamma["rounds"]) == (2, 2, 0)
    assert alpha["share"] == pytest.approx(0.5) and gamma["share"] == 0
    assert alpha["expected"] == pytest.approx(1 / 5) and beta["expected"] == pytest.approx(3 / 5)
    assert numbers.principle_usage([], None) == []


def test_revision_changes_by_hand():
    trajs = [
        traj("ok", "A", ["A \n", "B"], ["p", "q"]),  # same after stripping, then changed; final B != A
        traj("ok", "X", ["", "X"], ["p", "q"]),  # empty keeps X, then X again: never changed
        traj("failed", "M", ["N"], ["p"]),  # not finished: left out
        traj("ok", "P", ["Q", "P"], ["q", "p"]),  # changed twice, back to the initial answer
        traj("ok", "S", []),  # no rounds: no revisions, not in final_differs
    ]
    c = numbers.revision_changes(trajs)
    assert c["by_round"] == [
        {"round": 1, "n": 3, "changed": 1, "empty": 1, "rate": pytest.approx(1 / 3)},
        {"round": 2, "n": 3, "changed": 2, "empty": 0, "rate": pytest.approx(2 / 3)},
    ]
    assert c["all"] == {"n": 6, "changed": 3, "rate": 0.5}
    assert c["final_differs"] == {"n": 3, "changed": 1, "rate": pytest.approx(1 / 3)}
    # p: A->A' (no), X->"" (empty), Q->P (yes); q: A->B (yes), X->X (no), P->Q (yes)
    assert c["by_principle"]["p"] == {"n": 3, "changed": 1, "rate": pytest.approx(1 / 3)}
    assert c["by_principle"]["q"] == {"n": 3, "changed": 2, "rate": pytest.approx(2 / 3)}


def test_histogram_bins_by_hand_and_against_numpy():
    edges = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    vals = [0.5, 0.55, 0.5999999, 0.6, 0.7, 1.0, 1.2, 0.49, float("nan")]
    assert numbers.histogram(vals, edges) == [3, 1, 1, 0, 1]
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(0)
    xs = rng.uniform(0, 1, 500).tolist() + [0.0, 1.0, 0.25]
    e = [i / 20 for i in range(21)]
    assert numbers.histogram(xs, e) == np.histogram(xs, bins=e)[0].tolist()


def test_chosen_prob_summary_by_hand():
    rows = [{"chosen_prob": p} for p in (0.5, 0.6, 0.8, 0.9)] + [{"chosen_prob": None}, {"prompt": "no label"}]
    rows[0]["flags"] = ["tie"]
    s = numbers.chosen_prob_summary(rows)
    assert s["n"] == 4 and s["ties"] == 1
    assert s["mean"] == pytest.approx(0.7)
    # linear interpolation: positions 0.75, 1.5, 2.25 of [0.5, 0.6, 0.8, 0.9]
    assert s["quartiles"] == pytest.approx([0.575, 0.7, 0.825])
    assert s["edges"][0] == 0.5 and s["edges"][-1] == 1.0 and len(s["edges"]) == 11
    assert s["counts"] == [1, 0, 1, 0, 0, 0, 1, 0, 1, 0]
    low = numbers.chosen_prob_summary([{"chosen_prob": 0.2}, {"chosen_prob": 0.95}])
    assert low["edges"][0] == 0.0 and len(low["counts"]) == 20 and low["counts"][4] == 1 and low["counts"][19] == 1


def test_order_agreement_by_hand():
    rows = [{"order_agreement": v} for v in (1.0, 0.5, 0.5, 0.0, 1.0)] + [{"order_agreement": None}, {}]
    o = numbers.order_agreement(rows)
    assert o == {"n": 5, "distribution": {0.0: 1, 0.5: 2, 1.0: 2}, "mean": pytest.approx(0.6), "all_agreed": pytest.approx(0.4)}


def lrow(names, probs):
    return {"chosen_prob": 0.7, "label_principles": names, "label_principle_probs": probs}


def test_per_principle_by_hand():
    rows = [lrow(["a", "b"], [0.8, 0.3]), lrow(["a", "c"], [0.5, 0.9]), lrow(["b"], [0.6]),
            lrow(["a", "b"], [0.9])]  # lengths differ: a damaged row, left out
    got = {r["principle"]: r for r in numbers.per_principle(rows)}
    assert [r["principle"] for r in numbers.per_principle(rows)] == ["a", "b", "c"]
    assert (got["a"]["n"], got["a"]["with_label"], got["a"]["against"], got["a"]["undecided"]) == (2, 1, 0, 1)
    assert got["a"]["mean"] == pytest.approx(0.65) and got["a"]["with_rate"] == 1.0
    assert got["b"]["mean"] == pytest.approx(0.45) and got["b"]["with_rate"] == 0.5
    assert got["c"]["values"] == [0.9]


def test_principle_disagreement_by_hand():
    rows = [
        lrow(["a", "b"], [0.8, 0.3]),  # a-b disagree
        lrow(["a", "b", "c"], [0.7, 0.6, 0.2]),  # a-b agree, a-c and b-c disagree
        lrow(["a", "b"], [0.5, 0.9]),  # a undecided: no comparison
        lrow(["b", "c"], [0.1, 0.2]),  # b-c agree
    ]
    d = numbers.principle_disagreement(rows)
    assert d["principles"] == ["a", "b", "c"]
    assert [(p["a"], p["b"], p["n"], p["disagree"]) for p in d["pairs"]] == [("a", "c", 1, 1), ("a", "b", 2, 1), ("b", "c", 2, 1)]
    assert [p["rate"] for p in d["pairs"]] == [1.0, 0.5, 0.5]


def test_metric_panels_group_train_and_eval():
    recs = [{"step": 0, "data/pairs": 10.0}, {"step": 1, "train/loss": 1.0, "train/lr": 0.1, "epoch": 0.0},
            {"step": 2, "train/loss": 0.5, "train/grad_norm": 2.0, "train/kl": 0.01, "train/policy/approx_kl": 0.002},
            {"step": 2, "eval/loss": 0.7, "eval/accuracy": 0.6}, {"step": 3, "train/loss": float("nan"), "note": "x"}]
    series = numbers.metric_series(recs)
    assert series["train/loss"] == [(1.0, 1.0), (2.0, 0.5)]  # the NaN is not drawn
    main_panels, other = numbers.curve_panels(series)
    assert [(p["name"], p["group"]) for p in main_panels] == [
        ("loss", "loss"), ("accuracy", "accuracy"), ("kl", "KL"), ("policy/approx_kl", "KL"), ("lr", "learning rate")]
    assert main_panels[0]["lines"] == {"train": [(1.0, 1.0), (2.0, 0.5)], "eval": [(2.0, 0.7)]}
    assert [p["name"] for p in other] == ["grad_norm"]
    assert numbers.last_values(series)["data/pairs"] == (0.0, 10.0)


def test_trainer_kind_from_the_configs_the_trainers_save():
    pytest.importorskip("torch")
    from rlaif.train.config import load_config, to_dict
    from rlaif.train.dpo import DPOConfig
    from rlaif.train.grpo import GRPOConfig
    from rlaif.train.online_dpo import OnlineDPOConfig
    from rlaif.train.ppo import PPOConfig
    from rlaif.train.rm import RMConfig
    from rlaif.train.sft import SFTConfig

    for cls, kind in ((SFTConfig, "sft"), (RMConfig, "rm"), (DPOConfig, "dpo"), (PPOConfig, "ppo"),
                      (OnlineDPOConfig, "online-dpo"), (GRPOConfig, "grpo")):
        extra = ["reward_model=rm"] if kind == "ppo" else []
        cfg = load_config(cls, None, ["data=x", *extra])
        assert numbers.trainer_kind(to_dict(cfg)) == kind


# ------------------------------------------------------------------ the HTML


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> Tags:
    t = Tags()
    t.feed(html)
    return t


def png_size(uri: str) -> tuple[int, int]:
    assert uri.startswith("data:image/png;base64,")
    data = base64.b64decode(uri.split(",", 1)[1], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def check_self_contained(html: str) -> Tags:
    """No scripts, no external resources, every image an embedded PNG with a size."""
    t = parse(html)
    names = [tag for tag, _ in t.tags]
    assert "script" not in names and "link" not in names and "iframe" not in names and "object" not in names
    imgs = [a for tag, a in t.tags if tag == "img"]
    assert imgs
    for a in imgs:
        w, h = png_size(a["src"])
        assert w > 50 and h > 50
    for tag, a in t.tags:
        for attr in ("src", "href", "action", "srcset", "poster"):
            if attr in a:
                assert a[attr].startswith(("data:image/png;base64,", "#")), (tag, attr, a[attr][:80])
    csp = [a["content"] for tag, a in t.tags if tag == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0] and "img-src data:" in csp[0]
    assert "url(" not in html  # no CSS that could fetch
    return t


def test_report_of_a_generate_label_run(runs):
    gen = runs["gen"]
    path = refresh(gen)
    assert path == gen / "report.html" and path.is_file()
    html = path.read_text(encoding="utf-8")
    t = check_self_contained(html)
    ids = {a.get("id") for _, a in t.tags}
    assert {"principle-usage", "stage-tokens", "chosen-prob", "order-agreement", "per-principle", "principle-disagreement"} <= ids
    text = "".join(t.text)
    # model text (the fake engine echoes the prompt) is shown as text, never as markup
    assert HOSTILE in text
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    # principle usage: the report's counts from the chunks equal generate's own count in the manifest
    manifest = json.loads((gen / "manifest.json").read_text())
    usage = {r["principle"]: r["rounds"] for r in numbers.principle_usage(
        [json.loads(x) for x in (gen / "chunks" / "00000.jsonl").read_text(encoding="utf-8").split("\n") if x])}
    assert {k: v for k, v in usage.items() if v} == manifest["counts"]["principles_used"]
    for pid, n in manifest["counts"]["principles_used"].items():
        assert f"<td>{pid}</td><td class=\"n\">{n}</td>" in html
    # judge diagnostics as the manifest holds them
    assert f"{100 * manifest['diagnostics']['order_consistency']:.1f}%" in text
    assert "No human ratings yet" in text


def test_report_of_a_label_run_with_reference_labels(runs):
    lab = runs["lab"]
    out = build_report([lab])
    html = out.read_text(encoding="utf-8")
    check_self_contained(html)
    agreement = json.loads((lab / "manifest.json").read_text())["agreement"]["overall"]
    assert "Agreement with reference labels" in html
    assert f"{100 * agreement['agreement']:.1f}% of {agreement['n']} pairs" in html


def test_human_reviews_agreement_by_hand(runs, tmp_path):
    from rlaif.review.data import Review

    lab = tmp_path / "lab"
    shutil.copytree(runs["lab"], lab)
    prefs = [json.loads(x) for x in (lab / "preferences.jsonl").read_text(encoding="utf-8").split("\n") if x]
    rows = []
    # four ratings: the human prefers the AI's chosen response on three (likert 5-8), not on one
    for i, (p, likert) in enumerate(zip(prefs[:4], (8, 6, 5, 2))):
        r = Review(f"sub-{i:06d}", "ann", "2026-01-01T00:00:00.000+00:00", p["id"], rating_shown=likert, left="rejected",
                   likert=likert)
        rows.append(json.dumps(r.to_row()))
    rows.append('{"submission_id": "damaged')  # a line cut short: skipped with a warning
    (lab / "reviews.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    html = build_report([lab]).read_text(encoding="utf-8")
    text = "".join(parse(html).text)
    assert "75.0% of 4" in text
    assert f"4 on 4 of {len(prefs)} pairs, by 1 reviewer" in text
    assert "skipped" in text  # the damaged line is reported
    assert 'id="calibration"' in html


def test_train_run_report_and_a_torn_metrics_line(tmp_path):
    run = write_train_run(tmp_path / "dpo-run", torn_tail=True)
    html = build_report([run]).read_text(encoding="utf-8")
    check_self_contained(html)
    text = "".join(parse(html).text)
    assert "1 line(s) skipped" in text
    assert "dpo" in text
    # first and last values of the main metrics as logged: loss 0.65 -> 0.5, eval loss 0.61
    assert "train/loss0.65000.50004" in text.replace("\n", "").replace(" ", "")
    assert "eval/loss0.61000.61004" in text.replace("\n", "").replace(" ", "")
    assert 'id="train-curves"' in html and 'id="train-other"' in html


def test_several_runs_side_by_side(runs, tmp_path):
    out = build_report([runs["gen"], runs["lab"], runs["train"]], tmp_path / "cmp")
    assert out == tmp_path / "cmp" / "report.html"
    html = out.read_text(encoding="utf-8")
    t = check_self_contained(html)
    heads = [a for tag, a in t.tags if tag == "article"]
    assert [a["id"] for a in heads] == ["run-1", "run-2", "run-3"]
    assert 'id="comparison"' in html and "--columns: 3" in html
    # the comparison table has a column per run, in order
    assert html.index(">gen<") < html.index(">lab<") < html.index(">dpo-run<")
    # two labelled runs: their chosen_prob histograms overlaid
    assert 'id="compare-chosen-prob"' in html


def test_runs_with_the_same_folder_name_are_told_apart(runs, tmp_path):
    a, b = tmp_path / "a" / "run", tmp_path / "b" / "run"
    write_train_run(a)
    write_train_run(b)
    html = build_report([a, b], tmp_path / "out").read_text(encoding="utf-8")
    assert "a/run" in html and "b/run" in html
    assert 'id="compare-train-curves"' in html


def test_generate_run_without_labels_has_no_label_section(tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    gen = tmp_path / "plain"
    assert main(["generate", "--backend", "fake", "--prompts", str(prompts), "--out", str(gen), "--quiet"]) == 0
    html = refresh(gen).read_text(encoding="utf-8")
    check_self_contained(html)
    assert "section-generate" in html and "section-label" not in html


def test_sparse_manifests_and_an_empty_metrics_file(runs, tmp_path):
    """Run folders written by older versions (fewer manifest fields) and a training run that
    has not logged a step still make a report."""
    gen, lab = tmp_path / "gen", tmp_path / "lab"
    shutil.copytree(runs["gen"], gen)
    shutil.copytree(runs["lab"], lab)
    (gen / "manifest.json").write_text(json.dumps({"counts": {"trajectories": 6}}))
    (lab / "manifest.json").write_text(json.dumps({"settings": {"kind": "label"}, "agreement": {"overall": {"n": 3}}}))
    train = tmp_path / "train"
    write_train_run(train, records=[])
    html = build_report([gen, lab, train], tmp_path / "out").read_text(encoding="utf-8")
    assert "section-generate" in html and "section-label" in html and "section-train" in html
    assert "metrics.jsonl has no loss" in html


def test_errors_are_clear(runs, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    unfinished = tmp_path / "unfinished"
    (unfinished / "chunks").mkdir(parents=True)
    (unfinished / "settings.json").write_text("{}")
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"settings": {"kind": "bon"}}))
    cases = [
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(tmp_path / "file.txt")], "is not a folder"),
        ([str(tmp_path / "empty")], "is not a run folder"),
        ([str(unfinished)], "has not finished"),
        ([str(other)], "a kind rlaif report does not know (bon)"),
        ([str(runs["gen"]), str(runs["lab"])], "needs --out"),
        ([str(runs["gen"]), str(runs["gen"]), "--out", str(tmp_path / "o")], "given twice"),
    ]
    for argv, message in cases:
        assert main(["report", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    with pytest.raises(ReportError, match="not a run folder"):
        build_report([tmp_path / "empty"], tmp_path / "o2")
    assert not (tmp_path / "o2").exists()  # nothing written for a bad folder


def test_cli_writes_into_out_and_prints_the_path(runs, tmp_path, capsys):
    assert main(["report", str(runs["lab"]), "--out", str(tmp_path / "rep")]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(tmp_path / "rep" / "report.html") and Path(printed).is_file()


def test_real_tiny_training_run(tmp_path):
    """A real DPO run on the tests' tiny random-init model: every metric rlaif train logs
    gets a curve, and the table holds the values of metrics.jsonl."""
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("train_fixtures", ROOT / "tests" / "train" / "conftest.py")
    fx = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fx)
    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlaif.train import main as train_main

    tok = fx.make_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=True)
    model = tmp_path / "model"
    LlamaForCausalLM(cfg).save_pretrained(model, safe_serialization=True)
    tok.save_pretrained(model)
    data = tmp_path / "data"
    Dataset.from_list(fx.preference_rows(24)).save_to_disk(str(data / "preferences"))
    assert train_main("dpo", None, [f"model={model}", f"data={data}", f"runs_dir={tmp_path}", "name=dpo", "max_steps=3",
                                    "batch_size=4", "eval_fraction=0.2", "tensorboard=false", "lr=1e-3"]) == 0
    run = tmp_path / "dpo"
    html = build_report([run]).read_text(encoding="utf-8")
    check_self_contained(html)
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text(encoding="utf-8").split("\n") if x]
    last_loss = [r for r in recs if "train/loss" in r][-1]["train/loss"]
    first_loss = [r for r in recs if "train/loss" in r][0]["train/loss"]
    assert first_loss == pytest.approx(math.log(2), rel=1e-5)
    text = "".join(parse(html).text).replace("\n", "")
    assert f"train/loss{first_loss:,.4f}{last_loss:,.4f}3" in text.replace(" ", "")
    assert "trainerdpo" in text.replace(" ", "")
    assert "final/" in text


def test_commands_refresh_the_report_when_they_finish(tmp_path, repo_root, monkeypatch, capsys):
    """generate, label and train print the path of a fresh RUN/report.html at the end."""
    from rlaif.cli import main

    monkeypatch.setenv("RLAIF_REPORT", "1")
    out = tmp_path / "g"
    assert main(["generate", "--prompts", str(repo_root / "prompts" / "rlaif-prompts.jsonl"), "--limit", "3", "--rounds", "1",
                 "--out", str(out), "--backend", "fake", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed and (out / "report.html").stat().st_size > 1000
    # a report that cannot be built is a warning, and the command still succeeds
    import rlaif.report

    def broken(run_dir):
        raise rlaif.report.ReportError("matplotlib is not installed")

    monkeypatch.setattr(rlaif.report, "refresh", broken)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"id": "p1", "prompt": "q", "response_a": "x", "response_b": "y y"}\n', encoding="utf-8")
    assert main(["label", "--pairs", str(pairs), "--out", str(tmp_path / "l"), "--backend", "fake", "--quiet"]) == 0
    assert "no report (matplotlib is not installed)" in capsys.readouterr().err
