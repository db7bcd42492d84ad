"""Chat-template rendering and tokenisation of a prompt and its completion, defined once.

The trainers (:mod:`rlaif.train.data`) and the scorers that must read a sequence exactly as a
model was trained on it (:mod:`rlaif.reward`: reward models, process reward models) share
these functions, so that a score is never read off a tokenisation the model did not see.

A conversation is rendered with the tokenizer's chat template; the completion is the text the
template adds after the prompt rendered with ``add_generation_prompt``. A standard (string)
completion gets the EOS token appended, as TRL does.
"""
from __future__ import annotations

from typing import Any

Messages = list[dict[str, Any]]


def is_conversation(x: Any) -> bool:
    """A list of ``{"role", "content"}`` messages (TRL's conversational format)."""
    return isinstance(x, list) and all(isinstance(m, dict) and "role" in m for m in x)


def render_chat(tok, messages: Messages, add_generation_prompt: bool) -> str:
    """The chat template's text of ``messages`` ("" for no messages)."""
    if not messages:
        return ""
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def text_ids(tok, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens added ([] for no text)."""
    return list(tok(text, add_special_tokens=False)["input_ids"]) if text else []


def prefix_error(what: str) -> ValueError:
    return ValueError(
        f"the chat template does not render {what} as a prefix of the longer conversation, so "
        "completion tokens cannot be located; use a template that renders conversations incrementally"
    )


def encode_prompt_completion(tok, prompt: str | Messages, completion: str | Messages) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the completion the model is trained on."""
    if is_conversation(prompt):
        head = render_chat(tok, prompt, add_generation_prompt=True)
        full = render_chat(tok, list(prompt) + list(completion), add_generation_prompt=False)
        if not full.startswith(head):
            raise prefix_error("the prompt")
        return text_ids(tok, head), text_ids(tok, full[len(head):])
    ids = text_ids(tok, completion)
    if tok.eos_token_id is not None and (not ids or ids[-1] != tok.eos_token_id):
        ids.append(tok.eos_token_id)
    return text_ids(tok, prompt), ids
