"""Process supervision maths: the PRM's step loss, step rewards on tokens, GRPO's process advantages, the
step metrics, and the PRM's data layout -- each against an independent computation; and rlaif train prm resumed from a
checkpoint against the run never stopped."""
import json
import math

import pytest
import torch

from rlaif.reward.prm import aggregate, encode_steps, token_positions
from rlaif.train.process_losses import process_advantages, step_classification_loss, step_token_rewards
from rlaif.train.prm import collate_steps, step_metrics


def test_step_loss_is_pytorch_cross_entropy_with_probability_targets():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 2)
    targets = torch.tensor([[0, 1, 0, 0.25, 0], [1, 0, 0, 0, 0.6]])
    mask = torch.tensor([[0, 1, 0, 1, 0], [1, 1, 0, 0, 1]], dtype=torch.float32)
    loss, m = step_classification_loss(logits, targets, mask)
    sel = mask.bool()
    probs = torch.stack([1 - targets[sel], targets[sel]], -1)
    ref = torch.nn.functional.cross_entropy(logits[sel], probs, reduction="mean")
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    q = logits.softmax(-1)[..., 1][sel]
    assert m["step_accuracy"].item() == pytest.approx(((q > 0.5) == (targets[sel] > 0.5)).float().mean().item())
    # by hand: zero logits cost log 2 whatever the target; logits (0, 1) and target 1 cost log(1 + e^-1)
    assert step_classification_loss(torch.zeros(1, 1, 2), torch.tensor([[0.3]]), torch.ones(1, 1))[0].item() == pytest.approx(math.log(2))
    one = step_classification_loss(torch.tensor([[[0.0, 1.0]]]), torch.ones(1, 1), torch.ones(1, 1))[0].item()
    assert one == pytest.approx(math.log1p(math.exp(-1)), rel=1e-6)
    # the normaliser divides the sum (the loop's global count over micro-batches)
    assert step_classification_loss(logits, targets, mask, 10)[0].item() == pytest.approx(ref.item() * 5 / 10, rel=1e-6)


def test_step_rewards_land_on_the_tokens_that_end_the_steps():
    r = step_token_rewards(torch.tensor([[0.5, 0.2, 9.0]]), torch.tensor([[1, 3, 0]]), torch.tensor([[1, 1, 0]]), 5)
    assert r.tolist() == [[0.0, 0.5, 0.0, pytest.approx(0.2), 0.0]]


def test_process_advantages_by_hand():
    """DeepSeekMath sec. 4.1.3 written out for one group of two outputs: steps rewards (0.9, 0.1) ending at
    tokens 1 and 3 for output 0, (0.5,) ending at token 2 for output 1."""
    rewards = torch.tensor([[0.9, 0.1], [0.5, 0.0]])
    pos = torch.tensor([[1, 3], [2, 0]])
    smask = torch.tensor([[1, 1], [1, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    adv = process_advantages(rewards, pos, smask, group=2, mask=mask, eps=0.0)
    R = [0.9, 0.1, 0.5]
    mu = sum(R) / 3
    sd = math.sqrt(sum((x - mu) ** 2 for x in R) / 2)
    n = [(x - mu) / sd for x in R]
    want = [[n[0] + n[1], n[0] + n[1], n[1], n[1]], [n[2], n[2], n[2], 0.0]]
    assert adv.tolist() == [[pytest.approx(x, abs=1e-6) for x in row] for row in want]
    # groups are normalised on their own: a second group shifted by 10 gets the same advantages
    two = process_advantages(torch.cat([rewards, rewards + 10]), torch.cat([pos, pos]), torch.cat([smask, smask]), 2,
                             torch.cat([mask, mask]), eps=0.0)
    assert torch.allclose(two[:2], two[2:], atol=1e-5)


def test_aggregates():
    assert aggregate([0.9, 0.2, 0.5], "min") == 0.2
    assert aggregate([0.9, 0.2, 0.5], "prod") == pytest.approx(0.09)
    assert aggregate([0.9, 0.2, 0.5], "last") == 0.5
    assert aggregate([], "min") == 0.0
    with pytest.raises(ValueError):
        aggregate([1.0], "mean")


def test_step_metrics_by_hand():
    probs = [[0.9, 0.2, 0.8], [0.9, 0.9], [0.4, 0.9], [0.7, 0.6]]
    labels = [[True, False, True], [True, True], [True, False], [True, False]]
    m = step_metrics(probs, labels)
    # steps: 9, right: 0.9T 0.2F 0.8T | 0.9T 0.9T | 0.4T(wrong) 0.9F(wrong) | 0.7T 0.6F(wrong) -> 6/9
    assert m["step_accuracy"] == pytest.approx(6 / 9)
    # wrong steps as positives: tp 1 (0.2F); fp 1 (0.4T); fn 2 (0.9F, 0.6F) -> F1 = 2/(2+1+2)
    assert m["step_f1_wrong"] == pytest.approx(2 / 5)
    # first wrong step: solution 0 gold 1 pred 1 (hit); 2 gold 1 pred 0; 3 gold 1 pred -1 -> 1/3; solution 1 all right: hit
    assert m["first_error_accuracy"] == pytest.approx(1 / 3) and m["all_correct_accuracy"] == 1.0
    assert m["processbench_f1"] == pytest.approx(2 * (1 / 3) / (1 / 3 + 1))


def test_encode_steps_layout_and_collate(tokenizer):
    ids, ends = encode_steps(tokenizer, "w1 w2", ["w3 w4", "w5"], separator=" good")
    head = tokenizer.apply_chat_template([{"role": "user", "content": "w1 w2"}], tokenize=False, add_generation_prompt=True)
    want = tokenizer(head, add_special_tokens=False)["input_ids"] + tokenizer("w3 w4 good w5 good", add_special_tokens=False)["input_ids"]
    assert ids == want and ends == [len(ids) - 3, len(ids) - 1]
    assert tokenizer.convert_ids_to_tokens([ids[e] for e in ends]) == ["good", "good"]
    ids2, ends2 = encode_steps(tokenizer, "w1 w2", ["w3 w4", "w5"], separator=" good", max_length=len(ids) - 1)
    assert ends2 == ends[:1]  # the step that does not fit is left out
    b = collate_steps([{"input_ids": ids, "ends": ends, "targets": [1.0, 0.25], "labels": [True, False]}], 0)
    assert b["step_mask"][0].nonzero().flatten().tolist() == ends and b["targets"][0, ends].tolist() == [1.0, 0.25]


def test_token_positions_find_the_token_of_a_character(tokenizer):
    ids = tokenizer("w1 w2 good w3", add_special_tokens=False)["input_ids"]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert token_positions(tokenizer, ids, [text.index("good") + 4, len(text), 1]) == [2, 3, 0]


def test_training_on_steps_cut_another_way_than_the_prm_will_cut_warns(tmp_path, capsys):
    from rlaif.train.prm import PRMConfig, check_splitter

    (tmp_path / "manifest.json").write_text(json.dumps({"settings": {"splitter": {"mode": "marker", "pattern": " "}}}))
    check_splitter(PRMConfig(data=str(tmp_path), step_split="marker", step_pattern=" "))
    assert capsys.readouterr().out == ""
    check_splitter(PRMConfig(data=str(tmp_path)))
    assert "warning" in capsys.readouterr().out


def test_prm_training_resumed_from_a_checkpoint_repeats_the_uninterrupted_run(tmp_path):
    """rlaif train prm stopped after step 2 and run again ends with the weights and losses of a run never stopped."""
    import shutil

    from safetensors.torch import load_file

    from process_fixtures import make_tiny_lm, rule_rows
    from rlaif.cli import main

    lm = make_tiny_lm(tmp_path / "lm")
    (tmp_path / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rule_rows(32)))
    args = ["train", "prm", f"model={lm}", f"data={tmp_path / 'steps.jsonl'}", f"runs_dir={tmp_path}", "max_steps=4",
            "save_every=2", "keep_checkpoints=5", "lr=1e-3", "batch_size=4", "eval_fraction=0", "warmup_ratio=0.0",
            "tensorboard=false"]
    assert main([*args, "name=a"]) == 0
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-000004")
    shutil.rmtree(tmp_path / "b" / "final")
    kept = tmp_path / "b" / "checkpoints" / "step-000002" / "model.safetensors"
    before = kept.stat().st_mtime_ns
    assert main([*args, "name=b"]) == 0  # resume: auto (the latest checkpoint, step 2)
    assert kept.stat().st_mtime_ns == before  # resumed from it (a fresh start deletes the run's checkpoints)

    def losses(name):
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}

    la, lb = losses("a"), losses("b")
    assert sorted(la) == sorted(lb) == [1, 2, 3, 4] and la[1] != la[4]
    assert [lb[s] for s in (3, 4)] == pytest.approx([la[s] for s in (3, 4)], rel=1e-6)
    wa, wb = (load_file(str(tmp_path / n / "final" / "model.safetensors")) for n in ("a", "b"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-6, atol=1e-7)
