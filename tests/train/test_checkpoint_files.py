"""A checkpoint folder someone hands us runs no code when rlaif resumes from it.

The optimiser state is a distributed checkpoint (``optimizer/.metadata``, a pickle, and
``*.distcp`` shards). Each attack below runs a harmless command (creating a file) when unpickled
the way torch would; on the code before these checks each of them created that file.

* a dotted global through the allowed metadata module (``metadata.os.system``, pickle protocol 4);
* a ``.metadata`` replaced after rlaif checked it and before torch reads the checkpoint;
* a shard whose small non-tensor value (the learning rate) is a pickle that runs code;
* a shard path outside the folder.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import struct

import pytest
import torch

from rlaif.train import distributed
from rlaif.train.distributed import ResumeError, check_metadata, load_optimizer, save_optimizer


class Touch:
    """Unpickling this runs ``touch PATH`` through the shell."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def short_str(text: str) -> bytes:
    data = text.encode()
    return b"\x8c" + struct.pack("<B", len(data)) + data  # SHORT_BINUNICODE


def dotted_payload(command: str) -> bytes:
    """Protocol 4: STACK_GLOBAL("torch.distributed.checkpoint.metadata", "os.system")(command)."""
    return (b"\x80\x04" + short_str("torch.distributed.checkpoint.metadata") + short_str("os.system") + b"\x93"
            + short_str(command) + b"\x85" + b"R" + b".")


def trained(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


@pytest.fixture
def saved(tmp_path):
    model, optimizer = trained(0)
    folder = tmp_path / "optimizer"
    save_optimizer(model, optimizer, folder)
    return model, optimizer, folder


def outcome(call, *args) -> str:
    """What ``call`` did: "ok", or the message of the ResumeError it raised (anything else propagates after
    the marker check in the caller, which the tests make first: the command must not have run either way)."""
    try:
        call(*args)
    except ResumeError as exc:
        return str(exc)
    except BaseException as exc:  # e.g. torch failing on the payload's result after running it
        return f"crashed: {type(exc).__name__}"
    return "ok"


def fresh_copy(model):
    """The same parameters with an untouched optimiser to load into."""
    torch.manual_seed(1)
    clone = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    clone.load_state_dict(model.state_dict())
    return clone, torch.optim.AdamW(clone.parameters(), lr=5e-2)


def test_a_dotted_name_through_the_metadata_module_is_refused(tmp_path):
    marker = tmp_path / "ran"
    folder = tmp_path / "optimizer"
    folder.mkdir()
    (folder / ".metadata").write_bytes(dotted_payload(f"touch {marker}"))
    result = outcome(check_metadata, folder)
    assert not marker.exists(), "the payload ran"
    assert "not checkpoint metadata" in result and "os.system" in result


def test_metadata_swapped_after_the_check_is_never_read(saved, tmp_path, monkeypatch):
    model, optimizer, folder = saved
    marker = tmp_path / "ran"
    checked = distributed.check_metadata

    def check_then_swap(path):
        result = checked(path)
        (folder / ".metadata").write_bytes(pickle.dumps(Touch(marker)))
        return result

    monkeypatch.setattr(distributed, "check_metadata", check_then_swap)
    clone, clone_opt = fresh_copy(model)
    result = outcome(load_optimizer, clone, clone_opt, folder)
    assert not marker.exists(), "the swapped file was unpickled"
    assert result == "ok"
    # the checked metadata still loads the checkpoint: the optimiser is the saved one
    want, got = optimizer.state_dict(), clone_opt.state_dict()
    assert got["param_groups"][0]["lr"] == pytest.approx(1e-3)
    for key, state in want["state"].items():
        for name, value in state.items():
            assert torch.equal(got["state"][key][name], value), (key, name)


def rewrite_metadata(folder, change):
    """Load the real metadata (trusted here), apply ``change`` to its storage entries, write it back."""
    with open(folder / ".metadata", "rb") as f:
        metadata = pickle.load(f)
    change(metadata.storage_data)
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))


def test_a_non_tensor_value_that_would_run_code_is_refused(saved, tmp_path):
    model, _, folder = saved
    marker = tmp_path / "ran"
    evil = folder / "evil.distcp"
    torch.save(Touch(marker), evil)

    def point_lr_at_evil(storage):
        index = next(i for i in storage if i.fqn.endswith("param_groups.0.lr"))
        storage[index] = dataclasses.replace(storage[index], relative_path=evil.name, offset=0,
                                             length=evil.stat().st_size)

    rewrite_metadata(folder, point_lr_at_evil)
    clone, clone_opt = fresh_copy(model)
    result = outcome(load_optimizer, clone, clone_opt, folder)
    assert not marker.exists(), "the shard's value ran code"
    assert "optimiser values rlaif does not read" in result


def test_a_shard_outside_the_folder_is_refused(saved):
    _, _, folder = saved

    def escape(storage):
        index = next(iter(storage))
        storage[index] = dataclasses.replace(storage[index], relative_path="../../elsewhere.distcp")

    rewrite_metadata(folder, escape)
    with pytest.raises(ResumeError, match="outside its folder"):
        check_metadata(folder)
