"""Steps: the splitter (lines, paragraphs, regex, marker; code blocks, lists, markdown), and the engine
requests that sample from a partial solution (``ChatRequest.assistant_prefix``) and stop at the end
of a step (``ChatRequest.stop``) on the fake, openai and transformers backends."""
from __future__ import annotations

import pytest

from rlaif.data.steps import StepSplitter, code_blocks, join_steps
from rlaif.engine.base import ChatRequest, SamplingConfig, cut_at_stop
from rlaif.engine.fake import FakeEngine

MARKDOWN = """## Plan
1. Add the apples: 3 + 4 = 7.
2. Double it: 7 * 2 = 14.

Some **bold** text
with a second line.

```python
total = 3 + 4

print(total * 2)
```
- a list item
  - a nested item
The answer is 14."""


def test_lines_mode_cuts_at_every_line_and_keeps_a_code_block_whole():
    steps = StepSplitter().split(MARKDOWN)
    assert steps == [
        "## Plan", "1. Add the apples: 3 + 4 = 7.", "2. Double it: 7 * 2 = 14.", "Some **bold** text",
        "with a second line.", "```python\ntotal = 3 + 4\n\nprint(total * 2)\n```", "- a list item",
        "- a nested item", "The answer is 14.",
    ]


def test_paragraphs_mode_cuts_at_blank_lines_only():
    steps = StepSplitter("paragraphs").split(MARKDOWN)
    assert steps == [
        "## Plan\n1. Add the apples: 3 + 4 = 7.\n2. Double it: 7 * 2 = 14.",
        "Some **bold** text\nwith a second line.",
        "```python\ntotal = 3 + 4\n\nprint(total * 2)\n```\n- a list item\n  - a nested item\nThe answer is 14.",
    ]


def test_regex_and_marker_modes():
    assert StepSplitter("regex", r"\n?Step \d+: ").split("Step 1: add\nStep 2: double\nStep 3: done") == ["add", "double", "done"]
    assert StepSplitter("marker", " ки").split("3 + 4 = 7 ки 7 * 2 = 14 ки") == ["3 + 4 = 7", "7 * 2 = 14"]
    # a marker inside a code block does not count
    text = "a <s> b\n```\nx <s> y\n```\n<s> c"
    assert StepSplitter("marker", "<s>").split(text) == ["a", "b\n```\nx <s> y\n```", "c"]


def test_spans_point_into_the_text_and_separators_belong_to_no_step():
    text = "  one  \n\n\ttwo\n   \nthree\n"
    spans = StepSplitter().spans(text)
    assert [text[a:b] for a, b in spans] == ["one", "two", "three"]
    assert all(b <= a2 for (_, b), (a2, _) in zip(spans, spans[1:]))
    assert StepSplitter().split("") == [] and StepSplitter().split("\n \n") == []


def test_fences_close_only_on_a_fence_of_their_own_kind():
    text = "~~~\n```\ninside\n~~~\nafter"
    assert code_blocks(text) == [(0, text.index("after") - 1)]
    assert StepSplitter().split("````\n```\nstill code\n````\nout") == ["````\n```\nstill code\n````", "out"]
    assert StepSplitter().split("```\nnever closed\n\nmore") == ["```\nnever closed\n\nmore"]


def test_bad_settings_are_refused():
    for mode, pattern in (("words", ""), ("regex", ""), ("marker", ""), ("lines", "x"), ("regex", "("), ("regex", "x*")):
        with pytest.raises(ValueError):
            StepSplitter(mode, pattern)


def test_join_steps_spans():
    text, spans = join_steps(["a b", "c", "dd"])
    assert text == "a b\nc\ndd" and [text[a:b] for a, b in spans] == ["a b", "c", "dd"]


# ------------------------------------------------------------------ engines: partial turns and stop strings
def test_cut_at_stop_takes_the_earliest_stop():
    assert cut_at_stop("ab\ncd. ef", ["\n"]) == ("ab\n", True)
    assert cut_at_stop("ab. cd\nef", ["\n", ". "]) == ("ab. ", True)
    assert cut_at_stop("abc", ["\n"]) == ("abc", False)
    assert cut_at_stop("abc", []) == ("abc", False)


def test_fake_engine_stops_at_a_stop_string_and_sees_the_prefix():
    seen = []

    def script(req, sampling):
        seen.append(req.assistant_prefix)
        return "step two\nstep three\n"

    out = FakeEngine(script=script).generate([ChatRequest(({"role": "user", "content": "q"},), 1, assistant_prefix="step one\n",
                                                          stop=("\n",))], SamplingConfig(1.0, 1.0, 50))
    assert seen == ["step one\n"] and out[0].text == "step two\n" and out[0].finish_reason == "stop"
    assert out[0].prompt_tokens == 1 + 4 + 2  # the prefix is part of the prompt


def test_openai_engine_continues_the_assistant_turn_and_keeps_the_stop_string():
    from fixtures_server import Reply, ScriptedServer, chat_completion, models_list

    from rlaif.engine.openai_server import OpenAIServerEngine

    replies = iter([
        dict(chat_completion("two", "stop"), choices=[{"index": 0, "message": {"role": "assistant", "content": "two"},
                                                          "finish_reason": "stop", "stop_reason": "\n"}]),
        chat_completion("two\nthree\n", "stop"),  # a server that ignored "stop"
        chat_completion("done", "stop"),          # ended by the end token
    ])

    def script(method, path, body, attempt):
        if path == "/v1/models":
            return Reply(200, models_list("m"))
        return Reply(200, next(replies))

    with ScriptedServer(script) as srv:
        engine = OpenAIServerEngine(srv.url, "m", max_retries=0, show_progress=False)
        try:
            msgs = ({"role": "user", "content": "q"},)
            req = ChatRequest(msgs, 5, assistant_prefix="one\n", stop=("\n",))
            outs = [engine.generate([req], SamplingConfig(1.0, 1.0, 9))[0] for _ in range(3)]
        finally:
            engine.close()
        bodies = [b for m, p, b in srv.hits if p == "/v1/chat/completions"]
    assert [o.text for o in outs] == ["two\n", "two\n", "done"] and {o.finish_reason for o in outs} == {"stop"}
    b = bodies[0]
    assert b["messages"] == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "one\n"}]
    assert b["continue_final_message"] is True and b["add_generation_prompt"] is False
    assert b["stop"] == ["\n"] and b["include_stop_str_in_output"] is True and b["seed"] == 5


def test_transformers_engine_continues_where_the_full_answer_went_and_stops_where_it_was_cut(tmp_path):
    """Continuing from a partial answer must prompt with the chat template, the generation prompt and
    the partial answer's tokens: checked against a plain greedy loop over exactly those tokens. Stopping
    at a stop string must give the first part of the answer the same request gives without it. (A tiny
    random model with a byte-level tokenizer like the default model's: the test is about where the
    prompt ends and the answer is cut, not about what the model says.)"""
    import torch
    from process_fixtures import make_tiny_lm

    from rlaif.engine.hf_local import HFEngine

    engine = HFEngine(str(make_tiny_lm(tmp_path / "lm", init=0.5)), dtype="float32", show_progress=False)
    greedy = SamplingConfig(0.0, 1.0, 24)
    msgs = ({"role": "user", "content": "add 0 apples"},)
    full = engine.generate([ChatRequest(msgs)], greedy)[0]
    prefix = full.text[:9]
    cont = engine.generate([ChatRequest(msgs, assistant_prefix=prefix)], SamplingConfig(0.0, 1.0, 12))[0]
    ids = engine.encode_chat(msgs) + engine.tokenizer(prefix, add_special_tokens=False)["input_ids"]
    assert cont.prompt_tokens == len(ids)
    with torch.no_grad():
        for _ in range(12):
            ids.append(int(engine.lm(torch.tensor([ids])).logits[0, -1].argmax()))
    expected = engine.tokenizer.decode(ids[cont.prompt_tokens:], skip_special_tokens=True)
    assert cont.text == expected[: len(cont.text)] and len(cont.text) >= 6
    stop = full.text[len(full.text) // 2]  # a character the answer holds
    cut = engine.generate([ChatRequest(msgs, stop=(stop,))], greedy)[0]
    assert (cut.text, True) == cut_at_stop(full.text, [stop]) and cut.finish_reason == "stop"
    assert len(cut.text) < len(full.text)
    assert cut.completion_tokens == len(engine.tokenizer(cut.text, add_special_tokens=False)["input_ids"])


@pytest.mark.vllm
def test_vllm_engine_continues_and_stops_like_the_full_answer(vllm_engine):
    greedy = SamplingConfig(0.0, 1.0, 24)
    msgs = ({"role": "user", "content": "List three colours, one per line."},)
    full = vllm_engine.generate([ChatRequest(msgs)], greedy)[0]
    ids = vllm_engine.tokenizer(full.text, add_special_tokens=False)["input_ids"]
    prefix = vllm_engine.tokenizer.decode(ids[:5])
    cont = vllm_engine.generate([ChatRequest(msgs, assistant_prefix=prefix)], SamplingConfig(0.0, 1.0, 19))[0]
    assert prefix + cont.text == full.text and cont.prompt_tokens == full.prompt_tokens + 5
    cut = vllm_engine.generate([ChatRequest(msgs, stop=("\n",))], greedy)[0]
    assert (cut.text, True) == cut_at_stop(full.text, ["\n"]) and cut.finish_reason == "stop"
