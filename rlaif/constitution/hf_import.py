"""Import the JSON constitution format of Hugging Face's open Constitutional AI recipe.

That format is ``{"constitutions": [{"critic": str, "revision": str}, ...],
"system_chat": [[{"role", "content"}, ...], ...]}``: critique/revision request pairs, and
few-shot conversations of the shape user, assistant, critique request, critique, revision
request, revision (sometimes with earlier exchanges first). Each pair becomes one of our
principle files and the conversations become demonstrations of one constitution file; the
result is checked like any hand-written constitution before this function returns.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from rlaif.data import textio


class ImportErrorHF(ValueError):
    """The input is not a Hugging Face CAI constitution, or the output would clobber files."""


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s or "imported"


class _Dumper(yaml.SafeDumper):
    pass


def _str_representer(dumper: yaml.SafeDumper, value: str):
    # YAML counts U+0085, U+2028 and U+2029 as line breaks, yet PyYAML writes them raw in
    # plain, single-quoted and block scalars; read back, a U+0085 there turned into a space.
    # The double-quoted style escapes them (\N, \L, \P), so the text comes back unchanged.
    if any(ch in value for ch in "\x85\u2028\u2029"):
        style = '"'
    else:
        style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def _dump(data: dict[str, Any]) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


def _title(critic: str) -> str:
    words = critic.split()
    return " ".join(words[:8]) + (" ..." if len(words) > 8 else "")


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ImportErrorHF(f"{path} does not exist")
    # a byte-order mark and CRLF line ends are accepted
    data = textio.read_json(path, ImportErrorHF)
    if not isinstance(data, dict) or not isinstance(data.get("constitutions"), list) or not data["constitutions"]:
        raise ImportErrorHF(f"{path}: expected an object with a non-empty 'constitutions' list")
    for i, pair in enumerate(data["constitutions"]):
        if not isinstance(pair, dict) or not isinstance(pair.get("critic"), str) or not isinstance(pair.get("revision"), str):
            raise ImportErrorHF(f"{path}: constitutions[{i}] needs string fields 'critic' and 'revision'")
        if not pair["critic"].strip() or not pair["revision"].strip():
            raise ImportErrorHF(f"{path}: constitutions[{i}] has an empty 'critic' or 'revision'")
    chats = data.get("system_chat", [])
    if not isinstance(chats, list):
        raise ImportErrorHF(f"{path}: 'system_chat' must be a list of conversations")
    return data


def _demonstration(conv: list[dict[str, Any]], where: str) -> dict[str, Any]:
    """Split a few-shot conversation: the last 6 turns are the critique-revision exchange."""
    if not isinstance(conv, list) or len(conv) < 6 or len(conv) % 2:
        raise ImportErrorHF(f"{where}: a conversation needs an even number (>= 6) of turns, got {len(conv) if isinstance(conv, list) else conv!r}")
    for j, m in enumerate(conv):
        expected = "user" if j % 2 == 0 else "assistant"
        if not isinstance(m, dict) or m.get("role") != expected or not isinstance(m.get("content"), str):
            raise ImportErrorHF(f"{where}: turn {j} should be a {expected!r} message with string content")
    *context, prompt, response, crit_req, crit, rev_req, rev = conv
    demo: dict[str, Any] = {}
    if context:
        demo["context"] = [{"role": m["role"], "content": m["content"].strip()} for m in context]
    demo.update(
        prompt=prompt["content"].strip(),
        response=response["content"].strip(),
        critique_request=crit_req["content"].strip(),
        critique=crit["content"].strip(),
        revision_request=rev_req["content"].strip(),
        revision=rev["content"].strip(),
    )
    return demo


def import_hf_constitution(src: str | Path, out: str | Path, name: str | None = None, force: bool = False) -> list[Path]:
    """Write ``out/principles/*.yaml`` and ``out/constitution/<name>.yaml``; return the paths."""
    from rlaif.constitution import check_constitution_file

    src, out = Path(src), Path(out)
    data = _load(src)
    name = _slug(name or re.sub(r"^(hf[-_])?(cai[-_])?(constitu?tion[-_])?", "", src.stem))
    demos = [_demonstration(conv, f"{src}: system_chat[{i}]") for i, conv in enumerate(data.get("system_chat", []))]

    files: dict[Path, str] = {}
    ids = []
    for i, pair in enumerate(data["constitutions"], 1):
        pid = f"{name}-{i:02d}"
        ids.append(pid)
        critic, revision = pair["critic"].strip(), pair["revision"].strip()
        principle = {
            "id": pid,
            "title": _title(critic),
            "description": f"Imported from {src.name} (entry {i}).",
            "tags": ["imported", name],
            "critique": critic,
            "revision": revision,
            # The recipe has no comparison question; ask the judge about the same concern.
            "comparison": f"Consider this request to a reviewer: \"{critic}\" Which response needs the least revision under it?",
        }
        files[out / "principles" / f"{pid}.yaml"] = _dump(principle)
    constitution: dict[str, Any] = {
        "name": name,
        "description": f"Imported from the Hugging Face Constitutional AI file {src.name}.",
        "principles_dir": "../principles",
        "principles": [{"tag": name}],
    }
    if demos:
        constitution["demonstrations"] = demos
    # The recipe runs one critique/revision round per example, at temperature 1.0.
    constitution["defaults"] = {"rounds": 1, "samples_per_prompt": 1}
    const_path = out / "constitution" / f"{name}.yaml"
    files[const_path] = _dump(constitution)

    clashes = [p for p in files if p.exists()]
    if clashes and not force:
        raise ImportErrorHF(f"{clashes[0]} already exists ({len(clashes)} file(s) would be replaced); pass --force to replace them")
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    _, problems = check_constitution_file(const_path)
    if problems:
        raise ImportErrorHF("the imported files do not pass lint:\n" + "\n".join(map(str, problems)))
    return list(files)
