"""How ``rlaif try`` shows its results in the terminal (``rich``).

Model text (and prompt text) is never read as rich markup: every piece goes into a
:class:`rich.text.Text` object, and control characters (an escape sequence in a response would
otherwise reach the terminal) are shown as ``\\xNN``.
"""

from __future__ import annotations

import re
from typing import Iterable

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from rlaif.pipeline.workbench import Attempt, PromptResult, WorkbenchResult

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def safe(text: str, style: str = "") -> Text:
    """``text`` as plain terminal text: no markup, control characters spelled out."""
    return Text(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text), style=style)


def _prompt_text(r: PromptResult) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" if len(r.prompt.messages) > 1 else m["content"]
                     for m in r.prompt.messages)


def _verdict(p: float | None, orders: tuple[float, float] | None, what: str, other: str) -> Text:
    if p is None:
        return safe("not judged", "dim")
    if p > 0.5:
        word, style = what, "green"
    elif p < 0.5:
        word, style = other, "red"
    else:
        word, style = "tie", "yellow"
    out = Text()
    out.append(f"P({what} better) = {p:.3f}", style="bold")
    if orders is not None:
        agree = (orders[0] > 0.5) == (orders[1] > 0.5)
        out.append(f"  (orders: {orders[0]:.2f} {what} second, {orders[1]:.2f} {what} first; "
                   f"{'agree' if agree else 'disagree'})", style="dim")
    out.append("  -> ")
    out.append(word, style=f"bold {style}")
    return out


def _judge_line(a: Attempt) -> Text:
    if a.failure:
        return safe(f"failed: {a.failure}", "red")
    if a.judge is not None and a.judge.error:
        return safe(f"judge failed: {a.judge.error}", "red")
    text = _verdict(a.p_revision, a.order_probs(), "revision", "initial")
    if a.judge is not None and "identical" in a.judge.flags:
        text.append("  (the revision repeats the initial response)", style="dim")
    return text


def _finish(step) -> Text:
    return safe("  [cut at the token limit]", "dim yellow") if step.finish_reason == "length" else Text()


def _cell(step) -> Text:
    t = safe(step.text or "(empty)")
    return t.append_text(_finish(step))


def _single(r: PromptResult, label: str) -> list:
    a = r.attempts[label]
    table = Table(box=box.SIMPLE_HEAD, expand=True, show_lines=True, padding=(0, 1))
    table.add_column("round", width=5, no_wrap=True)
    table.add_column(safe("answer before the round" if len(a.rounds) > 1 else "initial response"), ratio=1)
    table.add_column("critique", ratio=1)
    table.add_column("revision", ratio=1)
    before = r.initial
    for i, rnd in enumerate(a.rounds, 1):
        table.add_row(str(i), _cell(before), _cell(rnd.critique), _cell(rnd.revision))
        before = rnd.revision if rnd.revision.text else before
    if not a.rounds:
        table.add_row("-", _cell(r.initial), safe("-"), safe("-"))
    return [table, Text("judge: ").append_text(_judge_line(a))]


def _against(r: PromptResult, labels: list[str]) -> list:
    old, new = labels
    parts: list = [Panel(_cell(r.initial), title="initial response (shared: same request, same seed)", title_align="left",
                         box=box.ROUNDED)]
    table = Table(box=box.SIMPLE_HEAD, expand=True, show_lines=True, padding=(0, 1))
    table.add_column("", width=10, no_wrap=True)
    table.add_column(safe(old), ratio=1)
    table.add_column(safe(new), ratio=1)
    a_old, a_new = r.attempts[old], r.attempts[new]
    for i in range(max(len(a_old.rounds), len(a_new.rounds))):
        for what in ("critique", "revision"):
            cells = [_cell(getattr(a.rounds[i], what)) if i < len(a.rounds) else safe(a.failure or "-", "red")
                     for a in (a_old, a_new)]
            table.add_row(f"{what} {i + 1}", *cells)
    table.add_row("judge", _judge_line(a_old), _judge_line(a_new))
    parts.append(table)
    if r.head_to_head is not None:
        h = r.head_to_head
        if h.error:
            parts.append(safe(f"before vs after: judge failed: {h.error}", "red"))
        else:
            direct, swapped = next(iter(h.slot_probs.values())) if h.slot_probs else (None, None)
            orders = (1.0 - direct, swapped) if direct is not None else None
            line = Text("before vs after (the working copy's question): ")
            parts.append(line.append_text(_verdict(r.p_new_better, orders, "working copy", old)))
    return parts


def render_prompt(r: PromptResult, result: WorkbenchResult) -> Panel:
    title = safe(f"{r.prompt.id}: {_prompt_text(r)}")
    title.truncate(110, overflow="ellipsis")
    if r.failure or r.initial is None:
        body: Group | Text = safe(f"failed: {r.failure}", "red")
    else:
        labels = [v.label for v in result.versions]
        body = Group(*(_single(r, labels[0]) if len(labels) == 1 else _against(r, labels)))
    return Panel(body, title=title, title_align="left", box=box.HEAVY_HEAD)


def render_summary(result: WorkbenchResult) -> Table:
    table = Table(title="summary", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("principle")
    table.add_column("mean P(revision better)", justify="right")
    table.add_column("revision preferred", justify="right")
    table.add_column("revision changed the answer", justify="right")
    for v in result.versions:
        mean = result.mean_p_revision(v.label)
        wins, judged = result.revision_wins(v.label)
        changed = [a.final != r.initial.text for r in result.results if r.initial is not None
                   for a in [r.attempts[v.label]] if a.rounds]
        table.add_row(safe(f"{v.principle.id} @ {v.label}"), "-" if mean is None else f"{mean:.2f}",
                      f"{wins}/{judged}", f"{sum(changed)}/{len(changed)}")
    if len(result.versions) == 2:
        ps = [r.p_new_better for r in result.results if r.p_new_better is not None]
        if ps:
            table.caption = (f"before vs after: the judge preferred the working copy's revision on "
                             f"{sum(p > 0.5 for p in ps)}/{len(ps)} prompts (mean P = {sum(ps) / len(ps):.2f})")
            table.caption_justify = "left"
    return table


def show(console: Console, result: WorkbenchResult, header: Iterable[Text] = (), footer: Iterable[Text] = ()) -> None:
    for line in header:
        console.print(line)
    for r in result.results:
        console.print(render_prompt(r, result))
    console.print(render_summary(result))
    for line in footer:
        console.print(line)
