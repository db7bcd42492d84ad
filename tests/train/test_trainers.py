"""CPU smoke tests of every recipe on a tiny random-init Llama, plus exact resume."""
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from rlaif.train import main
from rlaif.train.common import lr_factor
from rlaif.train.config import load_config
from rlaif.train.dpo import DPOConfig
from rlaif.train.rm import RMConfig


def run(kind, model, data, runs, name, *extra):
    args = [f"model={model}", f"data={data}", f"runs_dir={runs}", f"name={name}", "lr=1e-3", "batch_size=4",
            "eval_fraction=0.1", "warmup_steps=1", "tensorboard=false", *extra]
    assert main(kind, None, args) == 0
    return runs / name


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_losses(run_dir):
    return {m["step"]: m["train/loss"] for m in metrics(run_dir) if "train/loss" in m}


def weights_changed(model_dir, final_dir, prefix=""):
    before = load_file(str(model_dir / "model.safetensors"))
    after = load_file(str(final_dir / "model.safetensors"))
    shared = [k for k in before if prefix + k.removeprefix("model.") in after or k in after]
    name = "model.layers.0.self_attn.q_proj.weight"
    return not torch.equal(before[name], after[name]) and len(shared) > 0


def check_resume(kind, tiny_model_dir, run_folder, tmp_path, *extra):
    """Steps 3-4 after resuming from the step-2 checkpoint equal an uninterrupted run."""
    a = run(kind, tiny_model_dir, run_folder, tmp_path, f"{kind}-a", "max_steps=4", "save_every=2",
            "keep_checkpoints=5", *extra)
    b = tmp_path / f"{kind}-b"
    shutil.copytree(a, b)
    shutil.rmtree(b / "checkpoints" / "step-000004")
    shutil.rmtree(b / "final")
    run(kind, tiny_model_dir, run_folder, tmp_path, f"{kind}-b", "max_steps=4", "save_every=2", *extra)
    la, lb = train_losses(a), train_losses(b)
    assert sorted(la) == sorted(lb) == [1, 2, 3, 4]
    for step in (3, 4):
        assert lb[step] == pytest.approx(la[step], rel=1e-6)
    wa = load_file(str(a / "final" / "model.safetensors"))
    wb = load_file(str(b / "final" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-6, atol=1e-7)
    return a


# ---------------------------------------------------------------- config
def test_config_yaml_overrides_and_validation(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: x\nlr: 1e-5\nlora:\n  enabled: true\n  r: 4\nloss: ipo\n")
    cfg = load_config(DPOConfig, p, ["beta=0.5", "lora.alpha=8"])
    assert cfg.lr == 1e-5 and cfg.beta == 0.5 and cfg.lora.r == 4 and cfg.lora.alpha == 8
    assert cfg.length_average is True  # IPO averages by default
    with pytest.raises(ValueError, match="unknown"):
        load_config(DPOConfig, p, ["betta=0.5"])
    with pytest.raises(ValueError):
        load_config(DPOConfig, p, ["label_smoothing=0.7"])
    with pytest.raises(ValueError):
        load_config(RMConfig, None, [])  # data is required


def test_simpo_has_its_own_defaults_and_refuses_what_is_not_simpo():
    from rlaif.train.config import TrainConfigError

    simpo = load_config(DPOConfig, None, ["data=x", "loss=simpo"])
    # Meng et al. 2024: beta about 2, gamma / beta about 0.5; the reward is length-averaged
    assert (simpo.beta, simpo.simpo_gamma, simpo.simpo_gamma_beta_ratio) == (2.0, 1.0, 0.5)
    assert simpo.length_average is True and not simpo.needs_reference and simpo.reference is None
    scaled = load_config(DPOConfig, None, ["data=x", "loss=simpo", "beta=2.5", "simpo_gamma_beta_ratio=0.4"])
    assert scaled.simpo_gamma == pytest.approx(1.0)
    assert load_config(DPOConfig, None, ["data=x", "loss=simpo", "simpo_gamma=0.3"]).simpo_gamma == 0.3
    dpo = load_config(DPOConfig, None, ["data=x"])
    assert (dpo.beta, dpo.reference, dpo.length_average) == (0.1, "precompute", False)
    for bad, words in [
        ("length_average=false", "length_average"),
        ("reference=online", "reference"),
        ("reference=precompute", "reference"),
        ("ref_model=some/model", "ref_model"),
        ("simpo_gamma=0.3 simpo_gamma_beta_ratio=0.5", "disagree"),
        ("simpo_gamma=-1", "simpo_gamma"),
    ]:
        with pytest.raises(TrainConfigError, match=words):
            load_config(DPOConfig, None, ["data=x", "loss=simpo", *bad.split()])
    with pytest.raises(TrainConfigError, match="simpo only"):
        load_config(DPOConfig, None, ["data=x", "loss=sigmoid", "simpo_gamma=0.5"])
    # the resolved config a run saves loads again as the same config
    from rlaif.train.config import from_dict, to_dict

    assert from_dict(DPOConfig, to_dict(scaled)) == scaled


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "hinge", "rdpo", "simpo"])
def test_demo_dpo_config_takes_every_loss_from_the_command_line(loss):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / "dpo-demo.yaml"
    cfg = load_config(DPOConfig, path, [f"loss={loss}", *(["alpha=0.01"] if loss == "rdpo" else [])])
    assert cfg.loss == loss and cfg.beta == (2.0 if loss == "simpo" else 0.1)


def test_rdpo_needs_alpha_and_alpha_needs_rdpo():
    from rlaif.train.config import TrainConfigError

    assert load_config(DPOConfig, None, ["data=x", "loss=rdpo", "alpha=0.01"]).alpha == 0.01
    with pytest.raises(TrainConfigError, match="alpha"):
        load_config(DPOConfig, None, ["data=x", "loss=rdpo"])
    with pytest.raises(TrainConfigError, match="alpha"):
        load_config(DPOConfig, None, ["data=x", "loss=rdpo", "alpha=-0.1"])
    with pytest.raises(TrainConfigError, match="rdpo"):
        load_config(DPOConfig, None, ["data=x", "loss=sigmoid", "alpha=0.01"])


def test_lr_schedule_by_hand():
    # warm-up 3 steps: 1/4, 2/4, 3/4; then cosine over the remaining 4 steps
    assert [lr_factor(s, 7, 3, "cosine") for s in range(3)] == [0.25, 0.5, 0.75]
    assert lr_factor(3, 7, 3, "cosine") == 1.0
    assert lr_factor(5, 7, 3, "cosine") == pytest.approx(0.5, rel=1e-12)  # cos(pi/2)
    assert lr_factor(5, 7, 3, "linear", min_ratio=0.2) == pytest.approx(0.6, rel=1e-12)
    assert lr_factor(6, 7, 3, "constant") == 1.0


# ------------------------------------------------------------------- RM
def test_rm_smoke_resume_and_hf_load(tiny_model_dir, run_folder, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from rlaif.train.data import collate_pairs
    from rlaif.train.rm import rewards

    a = check_resume("rm", tiny_model_dir, run_folder, tmp_path)
    assert all(math.isfinite(v) for v in train_losses(a).values())
    assert (a / "config.yaml").exists() and (a / "checkpoints" / "step-000004" / "optimizer" / ".metadata").exists()
    m = AutoModelForSequenceClassification.from_pretrained(a / "final")
    assert type(m).__name__ == "LlamaForSequenceClassification" and m.config.num_labels == 1
    assert m.config.pad_token_id == 0
    # save_dtype auto keeps the starting model's dtype (float32 for the tiny model)
    assert {t.dtype for t in load_file(str(a / "final" / "model.safetensors")).values()} == {torch.float32}
    # transformers' pooling reads the last non-padding token: right padding changes nothing
    ex = [{"prompt": [2, 5, 6, 3], "chosen": [7, 8, 3], "rejected": [9, 3], "chosen_prob": 1.0, "margin": 0.0}]
    batch = collate_pairs(ex, pad_id=0)
    with torch.no_grad():
        r = rewards(m, batch)
        alone = rewards(m, {k: v[1:, :6] for k, v in batch.items() if v.dim() == 2})
    torch.testing.assert_close(r[1:], alone)
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(a / "final" / "model.safetensors"))
    assert not torch.equal(before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])


def test_rm_learns_heldout_preferences(tiny_model_dir, run_folder, tmp_path):
    """Pairs where the chosen answer uses other words than the rejected one: held-out
    accuracy after two epochs must be far above the 50% of chance."""
    r = run("rm", tiny_model_dir, run_folder, tmp_path, "rm-e2e", "epochs=2", "eval_fraction=0.25", "batch_size=8",
            "center_rewards_coef=0.01")
    ev = [m for m in metrics(r) if "eval/accuracy" in m][-1]
    assert ev["eval/accuracy"] >= 0.9
    first = [m for m in metrics(r) if "train/loss" in m][0]["train/loss"]
    assert ev["eval/loss"] < first


# ------------------------------------------------------------------ DPO
def test_dpo_smoke_resume_and_cache(tiny_model_dir, run_folder, tmp_path):
    a = check_resume("dpo", tiny_model_dir, run_folder, tmp_path)
    cache = list((tmp_path / ".cache" / "ref_logps").glob("*.safetensors"))
    assert len(cache) == 1  # computed once, reused by the resumed run
    data = metrics(a)[0]  # the training pairs' lengths, logged once before the first step
    assert data["step"] == 0 and data["data/pairs"] > 0 and 0 <= data["data/chosen_longer"] <= 1
    assert sum("data/pairs" in m for m in metrics(a)) == 1  # the resumed run did not log it again
    first = [m for m in metrics(a) if "train/loss" in m][0]
    assert first["train/length_chosen"] > 0 and 0 <= first["train/chosen_longer"] <= 1
    # before the first update the policy is the reference: sigmoid loss with soft labels
    # is log 2 exactly (every implicit reward is zero)
    assert first["train/loss"] == pytest.approx(math.log(2), rel=1e-5)
    assert first["train/margin"] == pytest.approx(0.0, abs=1e-5)
    assert weights_changed(tiny_model_dir, a / "final")
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(a / "final")


def test_dpo_online_reference_matches_precomputed(tiny_model_dir, run_folder, tmp_path):
    pre = run("dpo", tiny_model_dir, run_folder, tmp_path, "pre", "max_steps=2", "beta=0.5", "soft_labels=false")
    onl = run("dpo", tiny_model_dir, run_folder, tmp_path, "onl", "max_steps=2", "beta=0.5", "soft_labels=false",
              "reference=online")
    lp, lo = train_losses(pre), train_losses(onl)
    assert lp[1] == pytest.approx(math.log(2), rel=1e-5)
    assert lo[2] == pytest.approx(lp[2], rel=1e-4)


@pytest.mark.parametrize("loss", ["ipo", "hinge", "simpo", "rdpo"])
def test_dpo_variants_run(tiny_model_dir, run_folder, tmp_path, loss):
    beta = {"ipo": 0.5, "hinge": 0.1, "simpo": 2.0, "rdpo": 0.1}[loss]
    extra = ["alpha=0.02"] if loss == "rdpo" else []
    r = run("dpo", tiny_model_dir, run_folder, tmp_path, loss, "max_steps=2", f"loss={loss}", f"beta={beta}",
            "eval_fraction=0", "save_dtype=bf16", *extra)
    final = load_file(str(r / "final" / "model.safetensors"))
    assert {t.dtype for t in final.values()} == {torch.bfloat16}
    assert json.loads((r / "final" / "config.json").read_text())["dtype"] == "bfloat16"
    l1 = train_losses(r)[1]
    if loss == "ipo":  # h = 0 at the start: (0 - 1/(2 beta))^2 = 1
        assert l1 == pytest.approx(1.0, rel=1e-5)
    if loss == "hinge":  # max(0, 1 - 0) = 1
        assert l1 == pytest.approx(1.0, rel=1e-5)
    assert all(math.isfinite(v) for v in train_losses(r).values())


def test_dpo_lora_online_reference_is_base_model(tiny_model_dir, run_folder, tmp_path):
    pytest.importorskip("peft")
    r = run("dpo", tiny_model_dir, run_folder, tmp_path, "lora", "max_steps=3", "reference=online",
            "lora.enabled=true", "lora.r=4", "lora.target_modules=[q_proj,v_proj]", "lr=1e-2", "eval_fraction=0")
    losses = train_losses(r)
    assert losses[1] == pytest.approx(math.log(2), rel=1e-5)  # adapters start at zero
    assert losses[3] != losses[1]
    assert weights_changed(tiny_model_dir, r / "final")  # merged into the base weights


# ------------------------------------------------------------------ SFT
def test_sft_smoke_and_resume(tiny_model_dir, run_folder, tmp_path):
    a = check_resume("sft", tiny_model_dir, run_folder, tmp_path, "grad_accum=2")
    losses = train_losses(a)
    # random init over V tokens: the first loss is close to log V
    assert abs(losses[1] - math.log(131)) < 0.5
    assert weights_changed(tiny_model_dir, a / "final")


def test_gradient_accumulation_equals_full_batch(tiny_model_dir, run_folder, tmp_path):
    """Two micro-batches of 4 give the same loss and update as one batch of 8."""
    from rlaif.train import sft
    from rlaif.train.common import run_step

    results = []
    for name in ("acc", "full"):
        cfg = load_config(sft.SFTConfig, None, [f"model={tiny_model_dir}", f"data={run_folder}",
                                                f"runs_dir={tmp_path}", f"name={name}", "lr=1e-3",
                                                "eval_fraction=0", "tensorboard=false", "max_grad_norm=0"])
        s, spec = sft.setup(cfg)
        ex = s.train[:8]
        group = [ex[:4], ex[4:]] if name == "acc" else [ex]
        m = run_step(s, spec, group)
        results.append((m["loss"], m["nll"], s.model.model.layers[0].mlp.up_proj.weight.detach().clone()))
    (la, na, wa), (lf, nf, wf) = results
    assert la == pytest.approx(lf, rel=1e-5) and na == pytest.approx(nf, rel=1e-5)
    torch.testing.assert_close(wa, wf, rtol=1e-5, atol=1e-6)


def test_rm_lora_with_gradient_checkpointing(tiny_model_dir, run_folder, tmp_path):
    """LoRA on a sequence-classification model trains the adapters and the new score head;
    the merged final folder loads as a plain transformers model."""
    pytest.importorskip("peft")
    from transformers import AutoModelForSequenceClassification

    r = run("rm", tiny_model_dir, run_folder, tmp_path, "rm-lora", "max_steps=2", "lora.enabled=true", "lora.r=4",
            "gradient_checkpointing=true", "eval_fraction=0")
    assert all(math.isfinite(v) for v in train_losses(r).values())
    ckpt = load_file(str(r / "checkpoints" / "step-000002" / "model.safetensors"))
    assert any("lora_A" in k for k in ckpt) and any("score" in k for k in ckpt)
    assert not any("embed_tokens" in k for k in ckpt)  # frozen weights are not checkpointed
    m = AutoModelForSequenceClassification.from_pretrained(r / "final")
    assert not any("lora" in n for n, _ in m.named_parameters())


def test_rm_shared_prompt_pass_matches_plain_pass(tiny_model_dir):
    """One prompt pass shared by chosen and rejected gives the plain pass's rewards and gradients."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlaif.train import reference, rm
    from rlaif.train.data import collate_pairs, collate_pairs_shared_prompt

    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1, dtype=torch.float64)
    model.config.pad_token_id = 0
    assert reference.can_share_prompt(model)
    rng = torch.Generator().manual_seed(0)

    def seq(n):
        return torch.randint(4, 120, (n,), generator=rng).tolist()

    # prompts and completions of different lengths, so that both paddings are exercised
    ex = [{"prompt": seq(p), "chosen": seq(c), "rejected": seq(r), "chosen_prob": 0.8, "margin": 0.0}
          for p, c, r in [(5, 7, 3), (11, 2, 9), (1, 4, 4), (8, 10, 1)]]
    plain = collate_pairs(ex, 0)
    shared = collate_pairs_shared_prompt(ex, 0)
    assert int(plain["attention_mask"].sum()) == int(shared["attention_mask"].sum())

    def run(fn, batch):
        model.zero_grad()
        rc, rr = fn(batch)
        (rc.sum() * 0.7 - rr.sum() * 1.3).backward()
        return rc.detach(), rr.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    def plain_fn(batch):
        r = rm.rewards(model, batch)
        return r[: len(ex)], r[len(ex):]

    rc1, rr1, g1 = run(plain_fn, plain)
    rc2, rr2, g2 = run(lambda b: rm.rewards_shared_prompt(model, b), shared)
    torch.testing.assert_close(rc2, rc1, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(rr2, rr1, rtol=1e-9, atol=1e-9)
    assert g1.keys() == g2.keys() and len(g1) > 0
    for n in g1:
        # rotary tables are computed in float32 even for a float64 model: agreement to ~1e-7
        torch.testing.assert_close(g2[n], g1[n], rtol=1e-5, atol=1e-6)
    # an empty prompt (implicit-prompt data with nothing in common) falls back to the plain layout
    assert "prompt_ids" not in collate_pairs_shared_prompt([{**ex[0], "prompt": []}, ex[1]], 0)
    # the prompt matters: changing it changes both rewards
    ex[0]["prompt"] = seq(5)
    rc3, rr3 = rm.rewards_shared_prompt(model, collate_pairs_shared_prompt(ex, 0))
    assert abs(float(rc3[0] - rc2[0])) > 1e-6 and abs(float(rr3[0] - rr2[0])) > 1e-6


def test_rm_shared_prompt_off_with_gradient_checkpointing(tiny_model_dir):
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlaif.train import reference

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1, dtype=torch.float32)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert not reference.can_share_prompt(model)


def test_train_cli_reports_bad_settings_without_a_traceback(capsys):
    from rlaif.cli import main

    assert main(["train", "rm"]) == 2
    assert "data is required" in capsys.readouterr().err
    assert main(["train", "dpo", "--config", "no-such-file.yaml"]) == 2
    assert "no-such-file.yaml" in capsys.readouterr().err
    assert main(["train", "sft", "data=x", "bogus=1"]) == 2
    assert "unknown" in capsys.readouterr().err


def test_dpo_shared_prompt_pass_matches_plain_pass(tiny_model_dir):
    """Completion log-probs from one shared prompt pass equal the plain pass's, gradients too."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlaif.train import reference
    from rlaif.train.data import collate_pairs, collate_pairs_shared_prompt

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    assert reference.can_share_prompt(model)
    rng = torch.Generator().manual_seed(0)

    def seq(n):
        return torch.randint(4, 120, (n,), generator=rng).tolist()

    ex = [{"prompt": seq(p), "chosen": seq(c), "rejected": seq(r), "chosen_prob": 0.8, "margin": 0.0,
           "ref_chosen": -1.0, "ref_rejected": -2.0}
          for p, c, r in [(5, 7, 3), (11, 2, 9), (2, 4, 4), (8, 10, 1)]]
    plain = collate_pairs(ex, 0)
    shared = collate_pairs_shared_prompt(ex, 0, carry_last=True)
    assert "prompt_ids" in shared and shared["ref_chosen"].tolist() == [-1.0] * 4
    assert reference.completion_token_counts(shared).tolist() == reference.completion_token_counts(plain).tolist() \
        == [7, 2, 4, 10, 3, 9, 4, 1]

    def run(batch):
        model.zero_grad()
        lp = reference.pair_logps(model, batch)
        (lp * torch.linspace(-1, 1, lp.numel(), dtype=lp.dtype)).sum().backward()
        return lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    lp1, g1 = run(plain)
    lp2, g2 = run(shared)
    torch.testing.assert_close(lp2, lp1, rtol=1e-9, atol=1e-9)
    assert g1.keys() == g2.keys() and len(g1) > 0
    for n in g1:  # rotary tables are float32 even in a float64 model
        torch.testing.assert_close(g2[n], g1[n], rtol=1e-5, atol=1e-6)
    # a one-token prompt cannot give up its last token: the plain layout is used
    ex[0]["prompt"] = seq(1)
    assert "prompt_ids" not in collate_pairs_shared_prompt(ex, 0, carry_last=True)


def test_optional_float_settings_accept_yaml_exponents():
    from rlaif.train.ppo import PPOConfig

    cfg = load_config(PPOConfig, None, ["data=x", "target_kl=1e-3", "score_clip=5"])
    assert cfg.target_kl == 1e-3 and isinstance(cfg.score_clip, float)
    assert load_config(PPOConfig, None, ["data=x", "target_kl=null"]).target_kl is None


def test_train_command_writes_a_report_of_its_run(tiny_model_dir, run_folder, tmp_path, monkeypatch, capsys):
    """`rlaif train` ends by writing RUN/report.html with the training curves and printing its path."""
    from rlaif.cli import main

    monkeypatch.setenv("RLAIF_REPORT", "1")
    assert main(["train", "sft", f"model={tiny_model_dir}", f"data={run_folder}", f"runs_dir={tmp_path}", "name=rep",
                 "max_steps=3", "log_every=1", "eval_fraction=0", "tensorboard=false"]) == 0
    report = tmp_path / "rep" / "report.html"
    assert f"report: {report}" in capsys.readouterr().out
    html = report.read_text(encoding="utf-8")
    assert "data:image/png;base64," in html and "loss" in html
