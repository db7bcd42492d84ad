"""Learning tests: a tiny random-init Llama, pairs with an obvious preference, a few dozen steps.

The chosen answers use words w0-w59 and end in "good", the rejected ones w60-w119 and end in
"bad" (``conftest.preference_rows``), with the same length distribution, so nothing but content
separates them. On held-out pairs, after training, the reward model and DPO's implicit reward
must rank chosen above rejected and the reward gap must have grown from where it started. A
loss that ignored the label's direction (chosen and rejected swapped) fails every one of these.
"""
import math
import random

import pytest
import torch

from rlaif.train.common import evaluate
from rlaif.train.config import load_config


def _settings(model, data, runs, name, *extra):
    return [f"model={model}", f"data={data}", f"runs_dir={runs}", f"name={name}", "lr=1e-3", "batch_size=8",
            "eval_fraction=0.25", "warmup_steps=1", "tensorboard=false", "lr_schedule=constant", *extra]


@torch.no_grad()
def _scores(recipe, s):
    """Held-out (chosen, rejected) scores computed here, outside the recipe's loss function (so
    that a loss that swapped its arguments cannot also swap what is measured): the reward
    model's rewards, or the policy's summed completion log-probabilities."""
    from rlaif.train import reference, rm
    from rlaif.train.data import collate_pairs

    s.model.eval()
    batch = collate_pairs([{k: e[k] for k in ("prompt", "chosen", "rejected", "chosen_prob", "margin")}
                           for e in s.eval], s.tokenizer.pad_token_id)
    out = rm.rewards(s.model, batch) if recipe is rm else reference.pair_logps(s.model, batch)
    n = len(s.eval)
    return out[:n].double(), out[n:].double()


def _train_and_eval(recipe, cfg_cls, settings):
    """Held-out metrics and scores before and after training, through the recipe's own set-up and loop."""
    cfg = load_config(cfg_cls, None, settings)
    s, spec = recipe.setup(cfg)
    before, scores_before = evaluate(s, spec), _scores(recipe, s)
    recipe.train(s, spec)
    after, scores_after = evaluate(s, spec), _scores(recipe, s)
    recipe.cleanup(s)
    print("before", before, "\nafter", after)
    return before, after, scores_before, scores_after


@pytest.fixture(scope="module")
def graded_folder(tmp_path_factory):
    """The same kind of pairs labelled the way a judge labels them, soft and with margins, and
    recorded half the time the other way round: chosen is then the "bad" answer with
    chosen_prob < 1/2. The margin is the 0-3 level that goes with the probability
    (rlaif.pipeline.judge.margin). Only a loss that reads chosen_prob's direction learns from this set."""
    from datasets import Dataset

    from conftest import preference_rows
    from rlaif.pipeline.judge import margin

    rng = random.Random(3)
    rows = []
    for i, r in enumerate(preference_rows(240, seed=1)):
        p = rng.choice([0.55, 0.7, 0.8, 0.95])
        if i % 2:
            r = {**r, "chosen": r["rejected"], "rejected": r["chosen"]}
            p = 1.0 - p
        rows.append({**r, "chosen_prob": round(p, 3), "margin": margin(p)})
    assert {r["margin"] for r in rows} == {0.0, 1.0, 2.0, 3.0}
    d = tmp_path_factory.mktemp("graded")
    Dataset.from_list(rows).save_to_disk(str(d / "preferences"))
    return d


def test_dpo_implicit_reward_accuracy_and_margin_rise(tiny_model_dir, run_folder, tmp_path):
    from rlaif.train import dpo

    before, after, (c0, r0), (c1, r1) = _train_and_eval(
        dpo, dpo.DPOConfig, _settings(tiny_model_dir, run_folder, tmp_path, "dpo-learn", "epochs=2"))
    # before the first step the policy is its reference: every implicit reward is 0 (up to the
    # rounding that separates the cached reference pass from the policy's pass)
    assert before["eval/margin"] == pytest.approx(0.0, abs=1e-5)
    assert after["eval/accuracy"] >= 0.9
    assert after["eval/margin"] > 0.5  # beta * (log-ratio gap) on held-out pairs
    assert after["eval/reward_chosen"] > after["eval/reward_rejected"]
    assert after["eval/loss"] < before["eval/loss"]
    # the same, measured here: implicit reward beta * log(pi / pi_start), pi_start the reference
    gap = 0.1 * ((c1 - c0) - (r1 - r0))
    assert float((gap > 0).double().mean()) >= 0.9 and float(gap.mean()) > 0.5
    assert float(gap.mean()) == pytest.approx(after["eval/margin"], rel=1e-3)


def _good_minus_bad(s, chosen, rejected):
    """Score of the "good" answer minus that of the "bad" one, whichever side each was recorded on."""
    good = s.tokenizer.convert_tokens_to_ids("good")
    chosen_is_good = torch.tensor([good in e["chosen"] for e in s.eval])
    return torch.where(chosen_is_good, chosen - rejected, rejected - chosen)


def test_reward_model_accuracy_and_reward_gap_rise(tiny_model_dir, run_folder, tmp_path):
    from rlaif.train import rm

    before, after, (c0, r0), (c1, r1) = _train_and_eval(
        rm, rm.RMConfig, _settings(tiny_model_dir, run_folder, tmp_path, "rm-hard", "epochs=2",
                                   "center_rewards_coef=0.01", "soft_labels=false"))
    assert after["eval/accuracy"] >= 0.9
    assert after["eval/margin"] > before["eval/margin"] + 1.0  # the held-out reward gap grew
    assert after["eval/loss"] < before["eval/loss"]
    # the same, measured here from the model's rewards
    assert float((c1 > r1).double().mean()) >= 0.9
    assert float((c1 - r1).mean()) > float((c0 - r0).mean()) + 1.0


def test_reward_model_learns_from_soft_labels_and_margins_together(tiny_model_dir, graded_folder, tmp_path):
    """Half the pairs are recorded with the bad answer as "chosen" and chosen_prob < 1/2: the
    reward model must still learn to prefer the good answer (soft labels read in their
    direction, margins pushing towards the credited side)."""
    from rlaif.train import rm

    settings = _settings(tiny_model_dir, graded_folder, tmp_path, "rm-soft-margin", "epochs=2",
                         "center_rewards_coef=0.01", "soft_labels=true", "use_margin=true")
    cfg = load_config(rm.RMConfig, None, settings)
    s, spec = rm.setup(cfg)
    c0, r0 = _scores(rm, s)
    loss0 = evaluate(s, spec)["eval/loss"]
    rm.train(s, spec)
    c1, r1 = _scores(rm, s)
    after = evaluate(s, spec)
    gap0, gap1 = _good_minus_bad(s, c0, r0), _good_minus_bad(s, c1, r1)
    rm.cleanup(s)
    print("gap before", float(gap0.mean()), "after", float(gap1.mean()), "accuracy", float((gap1 > 0).double().mean()))
    assert 0.3 < float(torch.tensor([s.tokenizer.convert_tokens_to_ids("good") in e["chosen"]
                                     for e in s.eval]).double().mean()) < 0.7  # both orientations held out
    assert float((gap1 > 0).double().mean()) >= 0.9  # the good answer wins on held-out pairs
    assert float(gap1.mean()) > float(gap0.mean()) + 1.0  # by a reward gap that grew
    assert after["eval/loss"] < loss0


@pytest.fixture(scope="module")
def longer_chosen_folder(tmp_path_factory):
    """Pairs that differ in length only: the rejected answer is two words, the chosen one the same two
    words followed by six more of the same kind (all from w0-w9), so the chosen answer is always 6
    tokens longer and otherwise equal in content. chosen_prob is 0.75 on every pair: the labeller's
    whole preference (log-odds logit(0.75) = log 3) is what a length term of alpha * 6 can explain."""
    from datasets import Dataset

    rng = random.Random(0)
    words = lambda n, k: " ".join(f"w{rng.randrange(k)}" for _ in range(n))  # noqa: E731
    rows = []
    for i in range(128):
        short = words(2, 10)
        rows.append({"prompt": [{"role": "user", "content": words(rng.randint(2, 6), 120)}],
                     "chosen": [{"role": "assistant", "content": f"{short} {words(6, 10)}"}],
                     "rejected": [{"role": "assistant", "content": short}],
                     "chosen_prob": 0.75, "margin": 0.0, "prompt_id": f"p{i}"})
    d = tmp_path_factory.mktemp("longer-chosen")
    Dataset.from_list(rows).save_to_disk(str(d / "preferences"))
    return d


def test_rdpo_learns_less_length_preference_than_dpo(tiny_model_dir, longer_chosen_folder, tmp_path):
    """R-DPO (Park et al. 2024) credits alpha (|y_w| - |y_l|) of each preference to length, so on pairs
    whose chosen answer is always the longer one, and otherwise equal in content, it must learn a
    smaller preference for length than DPO. Same tiny model, data, seed and steps for both; on held-out
    pairs of the same kind, the implicit-reward gap beta * (log-ratio of the longer answer - log-ratio
    of the shorter), measured here from the trained model, must be lower for R-DPO. Here alpha * 6 =
    log 3 = logit(chosen_prob): length explains the whole preference, so R-DPO's optimum is a gap of 0
    where DPO's is log 3 (with the length term's sign reversed it would be 2 log 3)."""
    from rlaif.train import dpo

    gaps = {}
    for loss, extra in (("sigmoid", []), ("rdpo", [f"alpha={math.log(3.0) / 6}"])):
        settings = _settings(tiny_model_dir, longer_chosen_folder, tmp_path, f"len-{loss}", "epochs=3", "lr=3e-3",
                             "beta=1.0", f"loss={loss}", *extra)
        s, spec = dpo.setup(load_config(dpo.DPOConfig, None, settings))
        longer0, shorter0 = _scores(dpo, s)
        dpo.train(s, spec)
        longer1, shorter1 = _scores(dpo, s)
        dpo.cleanup(s)
        gaps[loss] = 1.0 * ((longer1 - longer0) - (shorter1 - shorter0))  # beta * log-ratio gap, beta = 1
    print({k: (round(float(g.mean()), 3), round(float((g > 0).double().mean()), 3)) for k, g in gaps.items()})
    assert len(gaps["sigmoid"]) == 32
    assert float(gaps["sigmoid"].mean()) > 0.3  # DPO learns that length pays: the set-up can show the effect
    assert float(gaps["rdpo"].mean()) < float(gaps["sigmoid"].mean()) - 0.25
