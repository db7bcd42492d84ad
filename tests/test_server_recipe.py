"""The vLLM server commands the README and docs/servers.md show are the ones the tests run.

* The documents' commands equal :func:`rlaif.engine.server_recipe.vllm_server_argv` (CPU and GPU),
  which ``tests/fixtures_server.py`` uses to start the test suite's real server.
* Under the ``vllm`` marker: ``rlaif generate --label`` through the command line, ``--backend
  openai``, on the four longest shipped prompts against that server. Their critique and labelling
  prompts are long enough for vLLM to prefill them in pieces, which killed a CPU server started with
  chunked prefill on (the README's earlier recipe): every label failed and the server was gone.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from fixtures_server import vllm_server  # noqa: F401  (the session's real server: the README's CPU command)
from rlaif.engine.server_recipe import vllm_server_argv

ROOT = Path(__file__).resolve().parent.parent


def documented_commands(path: Path) -> list[list[str]]:
    """Every ``python -m vllm.entrypoints.openai.api_server`` command in the file's code blocks, as argv."""
    blocks, current = [], None
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    commands = []
    for block in blocks:
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if "vllm.entrypoints.openai.api_server" in line and not line.lstrip().startswith("#"):
                commands.append(shlex.split(line))
    return commands


@pytest.mark.parametrize("doc", ["README.md", "docs/servers.md"])
def test_documented_server_commands_are_the_tested_ones(doc):
    found = documented_commands(ROOT / doc)
    assert found == [vllm_server_argv(device="cpu"), vllm_server_argv(device="gpu")]


def test_the_cpu_command_turns_chunked_prefill_off():
    cpu, gpu = vllm_server_argv(device="cpu"), vllm_server_argv(device="gpu")
    assert "--no-enable-chunked-prefill" in cpu and cpu[:3] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
    assert cpu[cpu.index("--gpu-memory-utilization") + 1] == "0.1" and cpu[cpu.index("--dtype") + 1] == "float32"
    assert "--no-enable-chunked-prefill" not in gpu
    with pytest.raises(ValueError, match="cpu' or 'gpu"):
        vllm_server_argv(device="tpu")


def longest_prompts(n: int) -> list[dict]:
    """The ``n`` longest prompts (all message text) of the shipped prompt sets."""
    from rlaif.data.prompts import read_prompts

    records = [r for path in sorted((ROOT / "prompts").glob("*.jsonl")) if "pairs" not in path.name
               for r in read_prompts(path)]
    records.sort(key=lambda r: (-sum(len(m["content"]) for m in r.messages), r.id))
    return [{"id": r.id, "messages": list(r.messages)} for r in records[:n]]


@pytest.mark.vllm
def test_generate_and_label_the_longest_prompts_through_the_documented_server(vllm_server, tmp_path):
    import httpx

    from rlaif.cli import main

    prompts = tmp_path / "longest.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in longest_prompts(4)))
    out = tmp_path / "run"
    code = main(["generate", "--prompts", str(prompts), "--limit", "4", "--rounds", "1", "--label",
                 "--backend", "openai", "--base-url", vllm_server, "--out", str(out), "--quiet"])
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert httpx.get(f"{vllm_server}/health", timeout=10).status_code == 200  # the server is still up
    assert code == 0 and counts["ok"] == 4 and counts["failed"] == 0, counts
    assert counts["label_pairs"] == 4 and counts["label_failed"] == 0 and counts["preference_rows"] == 4, counts
