"""Batched, padded, prompt-skipping log-probs against a plain per-example oracle."""
import torch

from rlaif.train.data import collate_pairs, collate_sft
from rlaif.train.losses import token_logps
from rlaif.train.reference import completion_logps, pair_logps


def _model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def _oracle(model, prompt, completion):
    """Sum of log p(completion token | prefix) for one unpadded sequence, full logits."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    lp = torch.log_softmax(logits.double(), -1)
    return sum(float(lp[len(prompt) + i - 1, t]) for i, t in enumerate(completion))


def test_pair_logps_match_per_example_oracle(tiny_model_dir):
    model = _model(tiny_model_dir)
    ex = [
        {"prompt": [2, 10, 11, 12, 3, 2, 6], "chosen": [20, 21, 3], "rejected": [30, 3], "chosen_prob": 1.0, "margin": 0.0},
        {"prompt": [2, 13, 3, 2, 6], "chosen": [22, 23, 24, 25, 3], "rejected": [31, 32, 33, 3], "chosen_prob": 1.0,
         "margin": 0.0},
    ]
    batch = collate_pairs(ex, pad_id=0)
    with torch.no_grad():
        got = pair_logps(model, batch)
    want = [_oracle(model, e["prompt"], e[side]) for side in ("chosen", "rejected") for e in ex]
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=1e-5)


def test_completion_logps_skip_prompt_logits_without_changing_values(tiny_model_dir):
    model = _model(tiny_model_dir)
    ex = [{"input_ids": [2, 10, 11, 3, 2, 6, 20, 21, 3], "loss_mask": [0, 0, 0, 0, 0, 0, 1, 1, 1]},
          {"input_ids": [2, 12, 3, 2, 6, 22, 3], "loss_mask": [0, 0, 0, 0, 0, 1, 1]}]
    batch = collate_sft(ex, pad_id=0)
    with torch.no_grad():
        lp, mask = completion_logps(model, batch)
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref = token_logps(full[:, :-1], batch["input_ids"][:, 1:])
    ref_mask = batch["loss_mask"][:, 1:]
    k = lp.shape[1]
    assert k < ref.shape[1]  # the prompt positions were not scored
    assert ref_mask[:, :-k].sum() == 0
    torch.testing.assert_close(lp * mask, (ref * ref_mask)[:, -k:], rtol=1e-5, atol=1e-6)
