"""Data loading, formats, chat-template masks, truncation, batching."""

import pytest

from rlaif.train import data as D

from conftest import preference_rows, sft_rows


def toks(tok, ids):
    return tok.convert_ids_to_tokens(ids)


def test_loads_run_folder_saved_dataset_and_files(run_folder, tmp_path):
    import datasets

    a = D.load_rows(run_folder, "preference")
    b = D.load_rows(run_folder / "preferences", "preference")
    c = D.load_rows(run_folder / "preferences.jsonl", "preference")
    datasets.Dataset.from_list(preference_rows(5)).to_parquet(str(tmp_path / "p.parquet"))
    d = D.load_rows(tmp_path / "p.parquet", "preference")
    assert len(a) == len(b) == len(c) == 240 and len(d) == 5
    assert a[0]["chosen"] == c[0]["chosen"]
    assert len(D.load_rows(run_folder, "sft")) == 160
    with pytest.raises(FileNotFoundError):
        D.load_rows(tmp_path / "missing", "sft")


def test_preference_formats_all_map_to_explicit_prompt():
    user = [{"role": "user", "content": "w1 w2"}]
    ch = [{"role": "assistant", "content": "w3"}]
    rj = [{"role": "assistant", "content": "w4"}]
    explicit = D.to_preference_example({"prompt": user, "chosen": ch, "rejected": rj, "chosen_prob": 0.8})
    implicit = D.to_preference_example({"chosen": user + ch, "rejected": user + rj})
    assert explicit.prompt == implicit.prompt == user
    assert explicit.chosen == implicit.chosen == ch and implicit.rejected == rj
    assert explicit.chosen_prob == 0.8 and implicit.chosen_prob == 1.0
    std = D.to_preference_example({"prompt": "Q: w1", "chosen": " w3", "rejected": " w4", "margin": 2})
    assert (std.prompt, std.chosen, std.margin) == ("Q: w1", " w3", 2.0)
    imp_std = D.to_preference_example({"chosen": "Q: w1 w3", "rejected": "Q: w1 w4"})
    assert (imp_std.prompt, imp_std.chosen, imp_std.rejected) == ("Q: w1", " w3", " w4")
    with pytest.raises(ValueError):
        D.to_preference_example({"prompt": "x", "chosen": "a", "rejected": "b", "chosen_prob": 1.5})


def test_margin_is_the_labellers_level_and_reward_gaps_are_not_margins():
    base = {"prompt": "Q: w1", "chosen": " w3", "rejected": " w4"}
    assert D.to_preference_example({**base, "margin": 3}).margin == 3.0
    # a best-of-N row: its reward difference is reward_gap, never a margin
    bon = {**base, "chosen_reward": 4.0, "rejected_reward": -3.5, "reward_gap": 7.5, "label_source": "reward-model"}
    assert D.to_preference_example(bon).margin == 0.0
    # rows written before the column was renamed still load, their reward gap not read as a margin
    old = {**base, "chosen_reward": 4.0, "rejected_reward": -3.5, "margin": 7.5, "label_source": "reward-model"}
    assert D.to_preference_example(old).margin == 0.0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="margin"):
            D.to_preference_example({**base, "margin": bad})


def test_length_summary_by_hand():
    # completion lengths (chosen, rejected): (5, 2), (3, 3), (1, 4), (6, 2); differences 3, 0, -3, 4
    ex = [{"chosen": [7] * c, "rejected": [8] * r} for c, r in [(5, 2), (3, 3), (1, 4), (6, 2)]]
    s = D.length_summary(ex)
    assert s["pairs"] == 4 and s["length_chosen_mean"] == 15 / 4 and s["length_rejected_mean"] == 11 / 4
    assert s["chosen_longer"] == 0.5 and s["same_length"] == 0.25
    # sorted differences -3, 0, 3, 4: nearest-rank p10 = 1st, p50 = 2nd, p90 = 4th
    assert (s["length_diff_p10"], s["length_diff_p50"], s["length_diff_p90"]) == (-3, 0, 4)
    assert "chosen longer in 50% of 4 pairs" in D.describe_lengths(s)
    assert D.length_summary([]) == {}
    batch = D.collate_pairs([{"prompt": [1], "chosen_prob": 1.0, "margin": 0.0, **e} for e in ex], pad_id=0)
    assert batch["chosen_len"].tolist() == [5, 3, 1, 6] and batch["rejected_len"].tolist() == [2, 3, 4, 2]
    m = D.pair_length_metrics(batch)
    assert (float(m["length_chosen"]), float(m["length_rejected"]), float(m["chosen_longer"])) == (3.75, 2.75, 0.5)
    shared = D.collate_pairs_shared_prompt([{"prompt": [1, 2], "chosen_prob": 1.0, "margin": 0.0, **e} for e in ex], 0)
    assert shared["chosen_len"].tolist() == [5, 3, 1, 6] and "prompt_ids" in shared


def test_prompt_completion_tokens(tokenizer):
    p, c = D.encode_prompt_completion(
        tokenizer, [{"role": "user", "content": "w1 w2"}], [{"role": "assistant", "content": "w3 good"}]
    )
    assert toks(tokenizer, p) == ["<|im_start|>", "user", "w1", "w2", "<|im_end|>", "<|im_start|>", "assistant"]
    assert toks(tokenizer, c) == ["w3", "good", "<|im_end|>"]
    # standard format: EOS appended to the completion
    p, c = D.encode_prompt_completion(tokenizer, "w1 w2", "w3")
    assert toks(tokenizer, c) == ["w3", "<|im_end|>"]


def test_assistant_only_mask_multi_turn_with_system(tokenizer):
    msgs = [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "w1"},
        {"role": "assistant", "content": "w2 w3"},
        {"role": "user", "content": "w4"},
        {"role": "assistant", "content": "good"},
    ]
    ids, mask = D.encode_conversation(tokenizer, msgs)
    trained = [t for t, m in zip(toks(tokenizer, ids), mask) if m]
    assert trained == ["w2", "w3", "<|im_end|>", "good", "<|im_end|>"]
    # the whole sequence is exactly the template's rendering
    assert ids == tokenizer(tokenizer.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"]


def test_truncation_policy_by_hand():
    pol = D.Truncation(max_length=6, max_prompt_length=3)
    # prompt keeps its last 3 tokens, completions are cut to the 3 left
    assert D.truncate_pair([1, 2, 3, 4], [[5, 6, 7, 8], [9]], pol) == ([2, 3, 4], [[5, 6, 7], [9]])
    assert D.truncate_pair([1, 2], [[5]], pol) == ([1, 2], [[5]])
    assert D.truncate_pair([1, 2, 3, 4], [[5]], D.Truncation(6, 3, "drop")) is None
    assert D.truncate_sequence(list(range(8)), [1] * 8, pol) == (list(range(6)), [1] * 6)
    with pytest.raises(ValueError):
        D.Truncation(4, 4)


def test_tokenize_preferences_counts_truncation(run_folder, tokenizer):
    rows = D.load_rows(run_folder, "preference")
    ex, st = D.tokenize_preferences(rows, tokenizer, D.Truncation(20, 8))
    assert st["rows"] == 240 and st["truncated"] > 0 and st["dropped"] == 0
    assert all(len(e["prompt"]) <= 8 and len(e["prompt"]) + len(e["chosen"]) <= 20 for e in ex)
    ex2, st2 = D.tokenize_preferences(rows, tokenizer, D.Truncation(20, 8, "drop"))
    assert st2["dropped"] == st["truncated"] and len(ex2) == 240 - st2["dropped"]


def test_tokenize_sft_formats(tokenizer):
    rows = sft_rows(3) + [{"prompt": "w1 w2", "completion": "w3"}, {"text": "w5 w6"}]
    ex, _ = D.tokenize_sft(rows, tokenizer, D.Truncation(64, 32))
    assert sum(ex[3]["loss_mask"]) == 2  # w3 + EOS
    assert ex[4]["loss_mask"] == [1, 1]


def test_split_eval_keeps_prompts_together():
    ex = [{"group": g, "i": i} for i, g in enumerate("aabbccddeeffgghhiijj")]
    tr, ev = D.split_eval(ex, 0.2, seed=3)
    assert len(ev) == 4 and len(tr) == 16
    assert not {e["group"] for e in tr} & {e["group"] for e in ev}
    assert D.split_eval(ex, 0.2, seed=3) == (tr, ev)


def test_length_grouped_batches():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(1, 200) for _ in range(1000)]
    b1 = D.length_grouped_batches(lengths, 8, seed=1, epoch=0)
    assert sorted(i for b in b1 for i in b) == list(range(1000))  # each index exactly once
    assert b1 == D.length_grouped_batches(lengths, 8, seed=1, epoch=0)  # deterministic
    assert b1 != D.length_grouped_batches(lengths, 8, seed=1, epoch=1)

    def pad_fraction(batches):
        total = sum(max(lengths[i] for i in b) * len(b) for b in batches)
        return 1 - sum(lengths) / total

    rand = D.length_grouped_batches(lengths, 8, seed=1, epoch=0, group=1)
    assert pad_fraction(b1) < 0.1 < 0.3 < pad_fraction(rand)


def test_collate_pairs_layout(tokenizer):
    ex = [{"prompt": [1, 2], "chosen": [3], "rejected": [4, 5], "chosen_prob": 0.9, "margin": 0.0, "index": 7}]
    b = D.collate_pairs(ex, pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3, 0], [1, 2, 4, 5]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert b["loss_mask"].tolist() == [[0, 0, 1, 0], [0, 0, 1, 1]]
    assert b["index"].tolist() == [7]


def test_sft_row_with_no_trainable_tokens_left_is_dropped(tokenizer):
    long_user = " ".join(["w1"] * 40)
    rows = [{"messages": [{"role": "user", "content": long_user}, {"role": "assistant", "content": "w2"}]}]
    ex, st = D.tokenize_sft(rows, tokenizer, D.Truncation(20, 10))
    assert ex == [] and st["dropped"] == 1
