"""Training under torchrun: 2 processes on CPU (gloo) against one process with the same global batch.

* One optimiser step of SFT, RM and DPO, with DDP and with FSDP2: the loss, every step metric,
  every parameter's gradient and every parameter after the update equal a single process that
  takes the same 8 examples as 2 micro-batches of 4 (``grad_accum=2``), where the 2 processes
  take one micro-batch of 4 each (``tests/train/dist_worker.py``).
* Resume across process counts through the command line: a 2-process FSDP2 run's step-2
  checkpoint resumed by 1 process (``grad_accum`` doubled), that run's 1-process checkpoint
  resumed by 2 processes, both giving the uninterrupted 2-process run's losses; a resume that
  would change the global batch stops at once with a message and writes nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlaif.train.distributed import ResumeError, check_metadata, layout, resume_position

HERE = Path(__file__).resolve().parent
ENV = dict(os.environ, OMP_NUM_THREADS="1", RLAIF_REPORT="0", TOKENIZERS_PARALLELISM="false")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
KINDS = ("sft", "rm", "dpo")


def launch(cmd: list, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], env=ENV, cwd=HERE.parent.parent, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def one_step(tiny_model_dir, run_folder, tmp_path_factory):
    """Each case's step metrics and tensors, by one process and by two."""
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    worker = HERE / "dist_worker.py"
    res = launch([sys.executable, worker, one, tiny_model_dir, run_folder, *(f"{k}:ddp" for k in KINDS),
                  "--", "batch_size=4", "grad_accum=2"])
    assert res.returncode == 0, res.stderr[-3000:]
    res = launch([*TORCHRUN, worker, two, tiny_model_dir, run_folder, *(f"{k}:{p}" for p in ("ddp", "fsdp") for k in KINDS),
                  "--", "batch_size=4", "grad_accum=1"])
    assert res.returncode == 0, res.stderr[-3000:]
    return one, two


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
@pytest.mark.parametrize("kind", KINDS)
def test_one_step_on_two_processes_equals_one_process(one_step, kind, parallel):
    one, two = one_step
    m1, m2 = (json.loads((d / f"{kind}-{p}.json").read_text()) for d, p in ((one, "ddp"), (two, parallel)))
    assert (m1["world"], m2["world"]) == (1, 2)
    assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-6)
    assert m1["grad_norm"] > 0  # clipped at 1.0 in both: the norm is the global one
    for key in set(m1) - {"world", "tokens"}:
        if key == "accuracy" and abs(m1.get("margin", 1.0)) < 1e-6:
            continue  # DPO's first step: policy = reference, rewards are rounding noise and so is their sign
        assert m2[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-6), key
    t1, t2 = load_file(str(one / f"{kind}-ddp.safetensors")), load_file(str(two / f"{kind}-{parallel}.safetensors"))
    assert sorted(t1) == sorted(t2) and any(k.startswith("grad/") for k in t1)
    for name in t1:
        if name.startswith("grad/"):
            torch.testing.assert_close(t2[name], t1[name], rtol=1e-5, atol=1e-5 * float(t1[name].abs().max()))
        else:  # the update: Adam's first step moves each weight by about lr
            torch.testing.assert_close(t2[name], t1[name], rtol=0, atol=2e-5)


# ------------------------------------------------------------------ resume with another number of processes


def train_rm(runs: Path, name: str, *extra, procs: int = 1, model=None, data=None) -> subprocess.CompletedProcess:
    args = ["-m", "rlaif", "train", "rm", f"model={model}", f"data={data}", f"runs_dir={runs}", f"name={name}", "lr=1e-3",
            "batch_size=4", "eval_fraction=0", "warmup_steps=1", "tensorboard=false", "max_steps=4", "parallel=fsdp", *extra]
    return launch([*TORCHRUN, *args] if procs == 2 else [sys.executable, *args])


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "train/loss" in r]
    assert len(steps) == len(set(steps)), "a step logged twice: only process 0 may write metrics"
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_resume_across_process_counts(tiny_model_dir, run_folder, tmp_path):
    go = dict(model=tiny_model_dir, data=run_folder)
    res = train_rm(tmp_path, "two", "save_every=2", "keep_checkpoints=5", procs=2, **go)
    assert res.returncode == 0, res.stderr[-3000:]
    two = tmp_path / "two"
    reference = losses(two)
    assert sorted(reference) == [1, 2, 3, 4]
    ckpt = two / "checkpoints" / "step-000002"
    assert sorted(p.name for p in ckpt.iterdir()) == ["model.safetensors", "optimizer", "state.json"]
    assert sorted(p.name for p in (ckpt / "optimizer").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert json.loads((ckpt / "state.json").read_text())["layout"]["world"] == 2

    # 2 processes -> 1 (the same global batch: grad_accum 1 x 2 processes = 2 x 1), checkpoints every step
    shutil.copytree(two, tmp_path / "down")
    for p in ("checkpoints/step-000004", "final"):
        shutil.rmtree(tmp_path / "down" / p)
    res = train_rm(tmp_path, "down", "grad_accum=2", "save_every=1", "keep_checkpoints=5", **go)
    assert res.returncode == 0, res.stderr[-3000:]
    down = losses(tmp_path / "down")
    assert sorted(down) == [1, 2, 3, 4]
    for step in (3, 4):
        assert down[step] == pytest.approx(reference[step], rel=1e-5)

    # 1 process -> 2: resume from the step-3 checkpoint that one process wrote
    shutil.copytree(tmp_path / "down", tmp_path / "up")
    for p in ("checkpoints/step-000004", "final"):
        shutil.rmtree(tmp_path / "up" / p)
    assert json.loads((tmp_path / "up" / "checkpoints" / "step-000003" / "state.json").read_text())["layout"]["world"] == 1
    res = train_rm(tmp_path, "up", procs=2, **go)
    assert res.returncode == 0, res.stderr[-3000:]
    assert losses(tmp_path / "up")[4] == pytest.approx(reference[4], rel=1e-5)
    w_ref, w_up = (load_file(str(tmp_path / r / "final" / "model.safetensors")) for r in ("two", "up"))
    for k in w_ref:
        torch.testing.assert_close(w_up[k].float(), w_ref[k].float(), rtol=1e-4, atol=1e-5)

    # a resume that changes the global batch stops before any step, saying what would work
    shutil.copytree(tmp_path / "up", tmp_path / "bad")
    for p in ("checkpoints/step-000004", "final"):
        shutil.rmtree(tmp_path / "bad" / p)
    before = (tmp_path / "bad" / "metrics.jsonl").read_text()
    res = train_rm(tmp_path, "bad", "grad_accum=2", procs=2, **go)  # its step-3 checkpoint: 1 process, grad_accum 2
    assert res.returncode != 0
    assert "set batch_size=4 grad_accum=1" in res.stderr + res.stdout, res.stderr[-3000:]
    assert (tmp_path / "bad" / "metrics.jsonl").read_text() == before
    assert not (tmp_path / "bad" / "final").exists()


# ------------------------------------------------------------------ the checks alone


def fake_checkpoint(folder: Path, state: dict, files=()) -> Path:
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps(state))
    for f in files:
        (folder / f).write_bytes(b"")
    return folder


def test_resume_position_rules(tmp_path):
    now = layout(world=1, batch_size=4, grad_accum=2, steps_per_epoch=10, total_steps=20)
    pos = {"step": 3, "epoch": 0, "micro": 3}
    old = fake_checkpoint(tmp_path / "old", {"position": pos}, ["optimizer.pt", "optimizer.rank1.pt"])
    with pytest.raises(ResumeError, match=r"written by 2 process\(es\) in the older per-process optimiser format"):
        resume_position(old, now)
    assert resume_position(old, {**now, "world": 2}) is None
    two = fake_checkpoint(tmp_path / "two", {"position": pos, "layout": layout(2, 4, 1, 10, 20)})
    assert resume_position(two, now) == {"step": 3, "epoch": 0, "micro": 6}  # 3 steps of 2 micro-batches
    assert resume_position(two, {**now, "world": 2, "grad_accum": 1}) is None
    with pytest.raises(ResumeError, match="set batch_size=4 grad_accum=2"):
        resume_position(two, {**now, "grad_accum": 1})
    with pytest.raises(ResumeError, match="set batch_size=4 grad_accum=2"):
        resume_position(two, {**now, "batch_size": 8, "grad_accum": 1})
    with pytest.raises(ResumeError, match="which 3 processes cannot divide"):
        resume_position(two, {**now, "world": 3})
    with pytest.raises(ResumeError, match="steps per epoch"):
        resume_position(two, {**now, "steps_per_epoch": 11})


def test_a_checkpoint_metadata_that_would_run_code_is_refused(tmp_path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / ".metadata").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ResumeError, match="not checkpoint metadata"):
        check_metadata(tmp_path / "ckpt")
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(ResumeError, match="no .metadata"):
        check_metadata(tmp_path)
