"""A plain ``transformers`` engine: batched ``generate`` with left padding.

The reference the benchmarks measure vLLM against, and a fallback where vLLM is missing.
Requests are sorted by length and cut into mini-batches so padding stays small; each
request is sampled with its own seeded generator state only approximately (one seed per
mini-batch), so this engine is not batch-invariant the way vLLM's per-request seeds are.
"""

from __future__ import annotations

import time
from typing import Sequence

from rlaif.engine.base import ChatRequest, SamplingConfig
from rlaif.records import Completion


class HFEngine:
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

    def encode_chat(self, messages) -> list[int]:
        text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, requests: Sequence[ChatRequest], sampling: SamplingConfig, desc: str = "") -> list[Completion]:
        torch = self.torch
        encoded = [self.encode_chat(r.messages) for r in requests]
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
                results[i] = Completion(text, finish, len(encoded[i]), n + (finish == "stop"))
            bar.update(len(idx))
        bar.close()
        return [r for r in results if r is not None]

    def close(self) -> None:
        self.lm = None
