"""A plain ``transformers`` engine: batched ``generate`` with left padding, and option scoring.

The reference the benchmarks measure vLLM against, and a fallback where vLLM is missing.
Requests are sorted by length and cut into mini-batches so padding stays small; each
request is sampled with its own seeded generator state only approximately (one seed per
mini-batch), so this engine is not batch-invariant the way vLLM's per-request seeds are.

Option scoring (:meth:`HFEngine.score_options`) follows :mod:`rlaif.engine.vllm_local`
exactly: the same prompt (chat template with the generation prompt, then the assistant
prefix), the same option tokens and errors, and one forward pass whose next-token logits
are log-softmaxed over the options' first tokens only -- what vLLM reports with
``allowed_token_ids`` and processed log-probabilities. It is the labeller's independent
reference: the tests check that both engines give the same probabilities.
"""

from __future__ import annotations

import time
from typing import Sequence

from rlaif.engine.base import (
    ChatRequest, ChatTokens, OptionScores, SamplingConfig, ScoreRequest, cut_at_stop, response_token_ids,
)
from rlaif.data.records import Completion


class HFEngine(ChatTokens):
    def __init__(self, model: str, batch_size: int = 16, dtype: str = "bfloat16", max_model_len: int = 4096,
                 show_progress: bool = True, trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t0 = time.perf_counter()
        self.model = model
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lm = AutoModelForCausalLM.from_pretrained(
            model, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
        ).eval()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.lm.to(self.device)
        self.batch_size = batch_size
        self.max_model_len = max_model_len
        self.show_progress = show_progress
        self.startup_s = time.perf_counter() - t0

    def info(self) -> dict[str, object]:
        return {"batch_size": self.batch_size, "max_model_len": self.max_model_len, "startup_s": round(self.startup_s, 2)}

    def generate(self, requests: Sequence[ChatRequest], sampling: SamplingConfig, desc: str = "") -> list[Completion]:
        torch = self.torch
        encoded = [self.encode_scoring_prompt(ScoreRequest(r.messages, r.assistant_prefix)) if r.assistant_prefix
                   else self.encode_chat(r.messages) for r in requests]
        results: list[Completion | None] = [None] * len(requests)
        order = []
        for i, ids in enumerate(encoded):
            if len(ids) + 1 > self.max_model_len:
                results[i] = Completion("", "error", len(ids), 0, error=f"prompt is {len(ids)} tokens; the model's context is {self.max_model_len}")
            else:
                order.append(i)
        order.sort(key=lambda i: len(encoded[i]))
        eos = self.tokenizer.eos_token_id
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), desc=desc or "generate", leave=False, disable=not self.show_progress)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt").to(self.device)
            room = self.max_model_len - batch["input_ids"].shape[1]
            if requests[idx[0]].seed is not None:
                torch.manual_seed(requests[idx[0]].seed)
            with torch.inference_mode():
                out = self.lm.generate(
                    **batch,
                    max_new_tokens=max(1, min(sampling.max_tokens, room)),
                    do_sample=sampling.temperature > 0,
                    temperature=sampling.temperature if sampling.temperature > 0 else None,
                    top_p=sampling.top_p if sampling.temperature > 0 else None,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new = out[:, batch["input_ids"].shape[1] :]
            for row, i in zip(new.tolist(), idx):
                n = len(row)
                finish = "length"
                if eos in row:
                    n = row.index(eos)
                    finish = "stop"
                else:
                    while n and row[n - 1] == self.tokenizer.pad_token_id:
                        n -= 1
                text = self.tokenizer.decode(row[:n], skip_special_tokens=True)
                count = n + (finish == "stop")  # the end token counts
                if requests[i].stop:  # generated to the end, then cut where generation would have stopped
                    text, cut = cut_at_stop(text, requests[i].stop)
                    if cut:
                        finish, count = "stop", len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
                results[i] = Completion(text, finish, len(encoded[i]), count)
            bar.update(len(idx))
        bar.close()
        return [r for r in results if r is not None]

    # ---------------------------------------------------------------- option scoring

    def score_options(self, requests: Sequence[ScoreRequest], options: Sequence[str], desc: str = "") -> list[OptionScores]:
        """log P(option_i) at the answer position, normalised over the options (see the module docstring).

        Prompts are sorted by length and run in mini-batches of ``batch_size``, left-padded with
        position ids that skip the padding; only the last position's logits are computed.
        """
        torch = self.torch
        options = tuple(options)
        if not options:
            raise ValueError("score_options needs at least one option")
        results: list[OptionScores | None] = [None] * len(requests)
        encoded: dict[int, list[int]] = {}
        wanted: dict[int, list[int]] = {}
        for i, req in enumerate(requests):
            ids = self.encode_scoring_prompt(req)
            if len(ids) >= self.max_model_len:
                results[i] = OptionScores((), len(ids), error=f"prompt is {len(ids)} tokens; the model's context is {self.max_model_len}")
                continue
            opt_ids = self.option_token_ids(ids, options)
            if isinstance(opt_ids, str):
                results[i] = OptionScores((), len(ids), error=opt_ids)
                continue
            encoded[i], wanted[i] = ids, opt_ids
        order = sorted(encoded, key=lambda i: len(encoded[i]))
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), desc=desc or "score", leave=False, disable=not self.show_progress)
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(encoded[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                n = len(encoded[i])
                input_ids[row, width - n :] = torch.tensor(encoded[i])
                mask[row, width - n :] = 1
            # Left padding: every prompt ends at the last column, whose logits predict the answer's
            # first token; positions count real tokens only, as they would without padding.
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = self.lm(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                                 position_ids=positions.to(self.device), logits_to_keep=1).logits[:, -1, :]
            for row, i in enumerate(idx):
                # log-softmax over the option tokens alone (vLLM: allowed_token_ids + processed log-probs)
                picked = logits[row, wanted[i]].float()
                results[i] = OptionScores(tuple(torch.log_softmax(picked, dim=-1).tolist()), len(encoded[i]))
            bar.update(len(idx))
        bar.close()
        return [r for r in results if r is not None]

    def response_logprobs(self, conversations, responses, ended) -> list[list[float] | None]:
        """Per-token log-probabilities of given answers, one forward pass each (see
        :class:`rlaif.engine.base.LogprobEngine`); the same tokens as the vLLM engine scores."""
        torch = self.torch
        from tqdm.auto import tqdm

        out: list[list[float] | None] = []
        for conv, text, end in tqdm(list(zip(conversations, responses, ended)), desc="log-probs", leave=False,
                                    disable=not self.show_progress):
            prompt = self.encode_chat(conv)
            answer = response_token_ids(self.tokenizer, text, end)
            if not answer or len(prompt) + len(answer) >= self.max_model_len:
                out.append([] if not answer else None)
                continue
            ids = torch.tensor([prompt + answer], device=self.device)
            with torch.inference_mode():
                logits = self.lm(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
            picked = torch.log_softmax(logits, dim=-1).gather(-1, ids[0, len(prompt):, None])[:, 0]
            out.append(picked.tolist())
        return out

    # ------------------------------------------------------------ RL operations (see RLEngine)

    def sample_tokens(self, prompt_ids, seeds, max_tokens, temperature=1.0):
        raise NotImplementedError(
            "the transformers backend cannot sample for RL: its seeds are per mini-batch, not per request, so a "
            "rollout would depend on the batch; use the vllm backend (engine.backend=vllm)")

    def update_weights(self, named_tensors) -> float:
        raise NotImplementedError("the transformers backend does not take new weights while running; use the vllm backend")

    def sleep(self) -> bool:
        """Never sleeps (nothing to offload that a trainer could use); returns False like vLLM without sleep mode."""
        return False

    def wake_up(self) -> None:
        """Nothing to do: :meth:`sleep` never puts this engine to sleep."""

    def close(self) -> None:
        self.lm = None
