"""``rlaif constitution test`` and ``rlaif constitution audit``: their flags and bodies (the work is in
:mod:`rlaif.pipeline.constitution_test` and :mod:`rlaif.pipeline.audit`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from rlaif.cli.engine_flags import add_engine_flags
from rlaif.pipeline.audit import DEFAULT_THRESHOLD
from rlaif.pipeline.constitution_test import DEFAULT_MIN_PASS

DEFAULT_AUDIT_LIMIT = 100
DEFAULT_JUDGE_NOTE = ("note: the default judge, SmolLM2-135M-Instruct, does not judge content: its two orders rarely agree "
                      "and the slot decides most verdicts (README, AI feedback). Expect it to fail many cases; test a "
                      "constitution against a bigger --feedback-model (docs/constitution-testing.md).")


def _judge_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--constitution", help="constitution the principle ids are judged in (default: default)")
    p.add_argument("--principles-dir", dest="principles_dir", help="principles folder (default: the constitution's)")
    p.add_argument("--feedback-model", dest="feedback_model",
                   help="the judge: 'default' (the embedded model), a folder or a hub id; with --backend openai its name on the server")
    p.add_argument("--few-shot", dest="few_shot", action="store_true", help="show the constitution's comparison examples before each question")
    p.add_argument("--cot", action="store_true", help="let the judge reason before the verdict is read")
    p.add_argument("--cot-clamp", dest="cot_clamp", nargs=2, type=float, metavar=("LO", "HI"),
                   help="CoT probability band (default 0.4 0.6)")
    p.add_argument("--seed", type=int, default=0, help="seed of the judge's requests (default 0)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (nothing else on stdout)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_engine_flags(p)


def add_test_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="*", metavar="CONSTITUTION|PRINCIPLE_ID",
                   help="a constitution (name or YAML file; default: default), or principle ids")
    p.add_argument("--min-pass", dest="min_pass", type=float, default=DEFAULT_MIN_PASS,
                   help="exit with status 5 when the total pass rate, or that of a principle with 10 or more cases, is below this (default 0.8)")
    p.add_argument("--strict", action="store_true", help="exit with status 3 when the judge looks uninformative")
    _judge_flags(p)


def add_audit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="*", metavar="RUN|CONSTITUTION|PRINCIPLE_ID",
                   help="a labelled run folder (its pairs; the card goes to RUN/judge_card.json), or a constitution or "
                        "principle ids (their test cases; default: default)")
    p.add_argument("--limit", type=int, default=DEFAULT_AUDIT_LIMIT, help="a run's first N pairs (default 100)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="flag a shift past this many log-odds (default 0.5)")
    p.add_argument("--policy-models", dest="policy_models", nargs=2, metavar=("M1", "M2"),
                   help="measure self-preference: the same answers paraphrased by each model (names on the server with --backend openai)")
    p.add_argument("--out", help="folder for judge_card.json when auditing test cases (a run's card goes into the run folder)")
    p.add_argument("--strict", action="store_true", help="exit with status 3 when a shift is flagged")
    _judge_flags(p)


def run(args: argparse.Namespace) -> int:
    from rlaif.cli.errors import UserError
    from rlaif.constitution import ConstitutionError
    from rlaif.models.model_zoo import ModelError
    from rlaif.settings import SettingsError

    if not 0.0 < args.level < 1.0:
        raise UserError(f"--level must be between 0 and 1, not {args.level}")
    try:
        if args.constitution_command == "test":
            return _test(args)
        return _audit(args)
    except (ConstitutionError, ModelError, SettingsError) as exc:
        raise UserError(str(exc)) from None
    except RuntimeError as exc:  # a server that went away mid-run: say so, no traceback
        raise UserError(str(exc)) from None


# ------------------------------------------------------------------ shared


def _is_constitution(spec: str) -> bool:
    from rlaif.constitution import ConstitutionError, find_constitution
    from rlaif.data import textio

    try:
        path = find_constitution(spec)
    except ConstitutionError:
        return False
    try:
        data = textio.read_yaml(path)
    except ValueError:
        return True  # a broken constitution file: loading it reports the problem
    return isinstance(data, dict) and isinstance(data.get("principles"), list)


def resolve_targets(targets: list[str], constitution: str | None, principles_dir: str | None):
    """(constitution, principles to test): a constitution's principles, or the named ones."""
    from rlaif.cli.errors import UserError
    from rlaif.constitution import load_constitution, load_principle_dir, principles_dir_for

    consts = [t for t in targets if _is_constitution(t)]
    ids = [t for t in targets if t not in consts]
    if len(consts) > 1 or (consts and (ids or constitution)):
        raise UserError("give one constitution, or principle ids (with --constitution naming the constitution they are judged in)")
    const = load_constitution(consts[0] if consts else constitution or "default", principles_dir)
    if not ids:
        return const, list(const.principles)
    pdir = Path(principles_dir) if principles_dir else principles_dir_for(Path(const.path), const.raw)
    pset = load_principle_dir(pdir)
    chosen = []
    for pid in dict.fromkeys(ids):
        inside = next((p for p in const.principles if p.id == pid), None)
        if inside is None and pid not in pset.principles:
            import difflib

            hint = difflib.get_close_matches(pid, sorted(pset.principles), n=1, cutoff=0.6)
            raise UserError(f"no principle or constitution {pid!r} (principles in {pdir})" + (f"; did you mean {hint[0]!r}?" if hint else ""))
        chosen.append(inside or pset.principles[pid])
    return const, chosen


def _judge(args: argparse.Namespace, spec: str | None):
    """(engine, model id) of the judge: --feedback-model (else ``spec``), else the server's or the default model."""
    from rlaif.cli.engines import connect_server, make_engine_factory
    from rlaif.cli.engine_flags import engine_config
    from rlaif.models.model_zoo import resolve_model

    cfg = engine_config(args)
    name = args.feedback_model or spec
    if cfg.backend == "openai":
        engine = connect_server(cfg, name or cfg.served_model, quiet=True)
        return engine, engine.model
    name = name or "default"
    model_id = name if cfg.backend == "fake" else resolve_model(name, log=lambda m: print(m, file=sys.stderr))
    if name == "default" and cfg.backend in ("vllm", "transformers"):
        print(DEFAULT_JUDGE_NOTE, file=sys.stderr)
    return make_engine_factory(cfg, model_id, args.seed, quiet=True)(), model_id


def _settings(args: argparse.Namespace, run_label: dict[str, Any] | None = None):
    from rlaif.pipeline.constitution_test import case_settings

    run_label = run_label or {}
    clamp = args.cot_clamp or run_label.get("cot_clamp") or (0.4, 0.6)
    return case_settings(cot=args.cot or bool(run_label.get("cot")), few_shot=args.few_shot or bool(run_label.get("few_shot")),
                         cot_clamp=tuple(clamp), seed=args.seed)


@contextlib.contextmanager
def _stdout_for(args: argparse.Namespace):
    """With --json, everything the engines print (vLLM logs to stdout, its workers too) goes to
    stderr, so that stdout holds the JSON document only."""
    if not args.json:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _bar(args: argparse.Namespace, total: int | None, unit: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, desc="judging", disable=args.quiet, file=sys.stderr)


# ------------------------------------------------------------------ rlaif constitution test


def _test(args: argparse.Namespace) -> int:
    from rlaif.cli.errors import UserError
    from rlaif.engine import answered_by
    from rlaif.pipeline.constitution_test import exit_status, format_report, judge_cases, report

    if not 0.0 <= args.min_pass <= 1.0:
        raise UserError(f"--min-pass must be between 0 and 1, not {args.min_pass}")
    const, principles = resolve_targets(args.targets, args.constitution, args.principles_dir)
    with_cases = [p for p in principles if p.tests]
    if not with_cases:
        raise UserError(f"no test cases in {', '.join(p.id for p in principles)}: add tests: to the principle files "
                        "(docs/constitution-testing.md)")
    settings = _settings(args)
    with _stdout_for(args):
        engine, model_id = _judge(args, None)
        try:
            with _bar(args, sum(len(p.tests) for p in with_cases), "case") as bar:
                results = judge_cases(engine, const, with_cases, settings, on_principle=lambda p: bar.update(len(p.tests)))
            answered = answered_by(engine)
        finally:
            engine.close()
    rep = report(results, args.level, args.min_pass)
    code = exit_status(rep, args.strict)
    rep = {"constitution": {"name": const.name, "path": const.path, "sha256": const.sha256},
           "judge": {"model": model_id, "answered_by": answered, "backend": args.__dict__.get("engine.backend") or "vllm"},
           "settings": {"cot": settings.cot, "cot_clamp": list(settings.cot_clamp), "few_shot": settings.few_shot, "seed": settings.seed},
           "without_cases": [p.id for p in principles if not p.tests], **rep, "exit_status": code}
    if args.json:
        print(json.dumps(rep, indent=2, ensure_ascii=False))
    else:
        print(f"constitution {const.name}: {len(results)} cases of {len(with_cases)} principles, judged by {answered}, both orders")
        print(format_report(rep))
    if rep["without_cases"]:
        print(f"rlaif: {len(rep['without_cases'])} principle(s) have no test cases: {', '.join(rep['without_cases'])}", file=sys.stderr)
    if rep["total"]["errors"]:
        print(f"rlaif: error: {rep['total']['errors']} of {rep['total']['cases']} cases could not be judged "
              f"({next(c['error'] for c in rep['cases'] if c['error'])}); run the command again", file=sys.stderr)
    for reason in rep["gate"]:
        print(f"rlaif: test failed: {reason}", file=sys.stderr)
    if rep["judge_warning"]:
        print(f"rlaif: {rep['judge_warning']}", file=sys.stderr)
    return code


# ------------------------------------------------------------------ rlaif constitution audit


def _is_run(spec: str) -> bool:
    return Path(spec).is_dir() and (Path(spec) / "manifest.json").is_file()


def run_items(run_dir: Path, const, limit: int, seed: int):
    """The audit items of a labelled run: its AI-labelled, decided pairs (first ``limit``), each
    under every principle of the constitution it was labelled with, in a coin-flipped orientation."""
    from rlaif.cli.errors import UserError
    from rlaif.data import textio
    from rlaif.pipeline.audit import AuditItem
    from rlaif.seeds import derive_seed

    path = run_dir / "preferences.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir} has no preferences.jsonl: audit a run made by rlaif label or rlaif generate --label")
    rows = [r for r in textio.read_jsonl(path, UserError, what="damaged preference row")
            if r.get("label_source") == "ai" and "tie" not in (r.get("flags") or [])]
    if not rows:
        raise UserError(f"{run_dir} has no AI-labelled pairs with a winner (run rlaif label, or rlaif generate --label)")
    known = {p.id for p in const.principles}
    items, unknown = [], set()
    for row in rows[:limit]:
        pid_pair, chosen, rejected = str(row["id"]), row["chosen"][-1]["content"], row["rejected"][-1]["content"]
        a, b = (chosen, rejected) if derive_seed(seed, pid_pair, "audit-orient") % 2 == 0 else (rejected, chosen)
        prompt = tuple({"role": m["role"], "content": m["content"]} for m in row["prompt"])
        for pid in row.get("label_principles") or []:
            if pid in known:
                items.append(AuditItem(f"{pid_pair}|{pid}", pid_pair, pid, prompt, a, b, None))
            else:
                unknown.add(pid)
    return items, min(limit, len(rows)), sorted(unknown)


def _run_context(run_dir: Path, args: argparse.Namespace):
    """(constitution, the run's label settings, its judge, its manifest) from a labelled run's manifest."""
    from rlaif.cli.errors import UserError
    from rlaif.constitution import load_constitution
    from rlaif.data import textio

    manifest = textio.read_json(run_dir / "manifest.json", UserError)
    settings = manifest.get("settings") or {}
    label = settings.get("label") if isinstance(settings.get("label"), dict) else {}
    judge = settings.get("feedback_model") or label.get("feedback_model") or settings.get("model")
    recorded = manifest.get("constitution") or {}
    spec = args.constitution or (recorded.get("path") if recorded.get("path") and Path(recorded["path"]).is_file() else None) \
        or recorded.get("name") or "default"
    const = load_constitution(spec, args.principles_dir)
    if recorded.get("sha256") and recorded["sha256"] != const.sha256:
        print(f"rlaif: note: the constitution {spec} has changed since the run was labelled "
              f"({recorded['sha256'][:12]} then, {const.sha256[:12]} now); its current text is used", file=sys.stderr)
    return const, label, judge, manifest


def _paraphrases(args: argparse.Namespace, texts: list[str]) -> dict[str, tuple[str, str]]:
    from rlaif.cli.engines import connect_server, make_engine_factory
    from rlaif.cli.engine_flags import engine_config
    from rlaif.models.model_zoo import resolve_model
    from rlaif.pipeline.audit import paraphrase

    cfg = engine_config(args)
    outs = []
    for name in args.policy_models:  # one model in memory at a time
        if cfg.backend == "openai":
            engine = connect_server(cfg, name, quiet=True)
        else:
            model_id = name if cfg.backend == "fake" else resolve_model(name, log=lambda m: print(m, file=sys.stderr))
            engine = make_engine_factory(cfg, model_id, args.seed, quiet=True)()
        try:
            outs.append(paraphrase(engine, texts, args.seed))
        finally:
            engine.close()
    return {t: (p1, p2) for t, p1, p2 in zip(texts, *outs) if p1 and p2}


def _audit(args: argparse.Namespace) -> int:
    from rlaif.cli.errors import UserError
    from rlaif.data.runs import atomic_write_text
    from rlaif.engine import answered_by
    from rlaif.pipeline.audit import CARD_NAME, AuditItem, format_card, judge_card, measure, probed_answers, summarise
    from rlaif.pipeline.constitution_test import REQUESTS_FAILED_EXIT

    if args.limit < 1 or args.threshold <= 0:
        raise UserError("--limit must be >= 1 and --threshold > 0")
    run_dir = Path(args.targets[0]) if len(args.targets) == 1 and _is_run(args.targets[0]) else None
    extra: list = []
    if run_dir is not None:
        const, run_label, run_judge, manifest = _run_context(run_dir, args)
        items, n_pairs, unknown = run_items(run_dir, const, args.limit, args.seed)
        if unknown:
            print(f"rlaif: note: principles not in {const.name} are left out: {', '.join(unknown)}", file=sys.stderr)
        source = {"kind": "run", "run": str(run_dir), "fingerprint": manifest.get("fingerprint"), "pairs": n_pairs}
        settings = _settings(args, run_label)
    else:
        if any(_is_run(t) for t in args.targets):
            raise UserError("audit one run folder at a time")
        const, principles = resolve_targets(args.targets, args.constitution, args.principles_dir)
        extra = [p for p in principles if p not in const.principles]
        items = [AuditItem(c.name, c.name, p.id, c.prompt, c.response_a, c.response_b, c.better.lower())
                 for p in principles for c in p.tests]
        if not items:
            raise UserError("no test cases to audit: add tests: to the principle files, or audit a labelled run folder")
        source = {"kind": "test cases", "cases": len(items), "principles": sorted({it.principle for it in items})}
        settings, run_judge = _settings(args), None
    if not items:
        raise UserError(f"nothing to audit in {run_dir}")
    with _stdout_for(args):
        paraphrases = _paraphrases(args, probed_answers(items, args.seed)) if args.policy_models else None
        engine, model_id = _judge(args, run_judge)
        try:
            with _bar(args, None, "request") as bar:  # the number of requests is known only as they are built
                measured = measure(engine, const, items, settings, args.seed, paraphrases, on_batch=bar.update, principles=extra)
            answered = answered_by(engine)
        finally:
            engine.close()
    summary = summarise(measured, args.level, args.threshold)
    judge = {"model": model_id, "answered_by": answered, "backend": args.__dict__.get("engine.backend") or "vllm"}
    card = judge_card(measured, summary, source=source, judge=judge, const=const, settings=settings, level=args.level,
                      threshold=args.threshold, policy_models=args.policy_models)
    where = run_dir or (Path(args.out) if args.out else None)
    if where is not None:
        where.mkdir(parents=True, exist_ok=True)
        atomic_write_text(where / CARD_NAME, json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    if args.json:
        print(json.dumps(card, indent=2, ensure_ascii=False))
    else:
        print(f"judge audit: {card['counts']['items']} items ({source['kind']}), judged by {answered}, "
              f"{measured['requests']} requests")
        print(format_card(card))
        if where is not None:
            print(f"judge card: {where / CARD_NAME}")
    if run_dir is not None:
        _refresh_report(run_dir)
    if measured["failed"]:
        print(f"rlaif: error: {measured['failed']} of {measured['requests']} judge requests failed "
              f"({measured['errors'][0]}); the shifts leave those items out; run the command again", file=sys.stderr)
        return REQUESTS_FAILED_EXIT
    if args.strict and card["flags"]:
        from rlaif.pipeline.diagnostics import STRICT_EXIT

        return STRICT_EXIT
    return 0


def _refresh_report(run_dir: Path) -> None:
    """Rewrite RUN/report.html with the judge card's section (a report that fails is only a warning)."""
    import os

    if os.environ.get("RLAIF_REPORT", "1") == "0":
        return
    from rlaif.report import ReportError, refresh

    try:
        print(f"report: {refresh(run_dir)}", file=sys.stderr)
    except ReportError as exc:
        print(f"rlaif: warning: no report ({exc})", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - the card is written; say what failed and go on
        print(f"rlaif: warning: the report failed ({type(exc).__name__}: {exc})", file=sys.stderr)
