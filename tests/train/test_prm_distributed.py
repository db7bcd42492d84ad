"""``rlaif train prm`` under torchrun: one optimiser step on 2 processes (DDP and FSDP2) equals one process
taking the same 8 solutions as 2 micro-batches of 4 (the loss averages over all labelled steps of the step,
whichever process holds them). Uses tests/train/dist_worker.py, as the SFT, RM and DPO cases do."""
from __future__ import annotations

import json
import random
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import HERE, TORCHRUN, launch


@pytest.fixture(scope="module")
def prm_step(tiny_model_dir, tmp_path_factory):
    rng = random.Random(0)
    rows = []
    for i in range(8):
        steps = [" ".join(f"w{rng.randrange(60)}" for _ in range(rng.randint(1, 4))) + (" bad" if rng.random() < 0.3 else "")
                 for _ in range(rng.randint(2, 4))]
        rows.append({"prompt": f"w{i} w{i + 1}", "completions": steps, "labels": ["bad" not in s for s in steps]})
    data = tmp_path_factory.mktemp("steps") / "steps.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    worker = HERE / "dist_worker.py"
    res = launch([sys.executable, worker, one, tiny_model_dir, data, "prm:ddp", "--", "batch_size=4", "grad_accum=2",
                  "length_grouping=1"])
    assert res.returncode == 0, res.stderr[-3000:]
    res = launch([*TORCHRUN, worker, two, tiny_model_dir, data, "prm:ddp", "prm:fsdp", "--", "batch_size=4", "grad_accum=1",
                  "length_grouping=1"])
    assert res.returncode == 0, res.stderr[-3000:]
    return one, two


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_one_prm_step_on_two_processes_equals_one_process(prm_step, parallel):
    one, two = prm_step
    m1, m2 = (json.loads((d / f"prm-{p}.json").read_text()) for d, p in ((one, "ddp"), (two, parallel)))
    assert (m1["world"], m2["world"]) == (1, 2)
    for key in set(m1) - {"world", "tokens"}:
        assert m2[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-6), key
    t1, t2 = load_file(str(one / "prm-ddp.safetensors")), load_file(str(two / f"prm-{parallel}.safetensors"))
    assert sorted(t1) == sorted(t2)
    for name in t1:
        if name.startswith("grad/"):
            torch.testing.assert_close(t2[name], t1[name], rtol=1e-5, atol=1e-5 * float(t1[name].abs().max()))
        else:
            torch.testing.assert_close(t2[name], t1[name], rtol=0, atol=2e-5)
