"""A second device on a CPU-only machine: what CUDA would refuse, refused here too.

CI has no GPU, and on a CPU `torch.ones(h, w)` and `torch.ones(h, w, device=x.device)` are the
same tensor, so a helper tensor made without `device=` passes every CPU test and fails on the
first GPU (li2024's task mask did: issue 21). `OtherDevice` is a TorchFunctionMode that keeps
the computation on the CPU but tracks, per tensor, where it would live if the job's device
were a GPU, with CUDA's rules:

- the job's device is `DEVICE` (cpu:1); a tensor moved there (`.to(DEVICE)`, `.to(t)` of a
  device tensor, `Module.to(DEVICE)`), made there (`device=DEVICE` or `device=t.device`) or
  computed from a device tensor is on the device, and reports `DEVICE` as its `.device`;
- a tensor made without a device (`torch.ones(...)`, `torch.from_numpy`, a CPU generator's
  draw, `.cpu()`), or computed from host tensors only, is on the host;
- an op that mixes a device tensor with a host tensor of one or more dimensions raises, as
  CUDA does (a 0-dim host tensor is a scalar CUDA accepts; a device tensor indexed by host
  indices and `copy_` across devices are allowed; `.numpy()` of a device tensor raises);
- a tensor the mode never saw made (gradients, written by autograd) is unknown and never
  conflicts, so the check errs towards passing.

It is a simulation: the fault (a GPU) cannot be caused here. tests/model/test_devices.py
checks the simulation itself raises where CUDA did.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

DEVICE = torch.device("cpu", 1)  # the job's device: a CPU device that is not `cpu`
HOST, ON_DEVICE = "host", "device"
_DEVICE_GET = torch.Tensor.device.__get__
_DATA_SET = torch.Tensor.data.__set__
_MOVES = {torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.cuda}
_MIXES_ALLOWED = {torch.Tensor.copy_}  # copies across devices are what CUDA allows


class DeviceMismatch(RuntimeError):
    """What CUDA raises as 'Expected all tensors to be on the same device'."""


def _place(device: Any) -> str:
    """HOST or ON_DEVICE for a `device=` argument."""
    return ON_DEVICE if device is not None and torch.device(device) == DEVICE else HOST


class OtherDevice(TorchFunctionMode):
    """Run code as if `DEVICE` were a GPU (see the module docstring); use as a context."""

    def __init__(self) -> None:
        super().__init__()
        self.where = WeakIdKeyDictionary()

    def place(self, t: torch.Tensor) -> str | None:
        return self.where.get(t)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func == _DEVICE_GET:
            return DEVICE if self.place(args[0]) == ON_DEVICE else func(*args)
        if func == _DATA_SET:  # param.data = t (Module.to): the parameter goes where t is
            self._mark(args[0], self.place(args[1]))
            return func(*args)
        if func in _MOVES:
            return self._move(func, args, kwargs)
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        places = {self.place(t) for t in inputs}
        self._check(func, args, inputs)
        target = None
        if "device" in kwargs:  # a factory told where to allocate
            target = _place(kwargs["device"])
            kwargs["device"] = torch.device("cpu")
            if target == ON_DEVICE and kwargs.get("generator") is not None:
                raise DeviceMismatch(f"{_name(func)}: a CPU generator drawing on the device")
        elif ON_DEVICE in places:
            target = ON_DEVICE
        elif HOST in places or not inputs:
            target = HOST
        out = func(*args, **kwargs)
        if func is torch.Tensor.numpy and ON_DEVICE in places:
            raise DeviceMismatch("numpy() of a device tensor: move it to the host first")
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._mark(t, target)
        return out

    def _mark(self, t: torch.Tensor, place: str | None) -> None:
        if place is None:
            self.where.pop(t, None)
        else:
            self.where[t] = place

    def _check(self, func, args: tuple, inputs: list[torch.Tensor]) -> None:
        if func in _MIXES_ALLOWED:
            return
        if func is torch.Tensor.__getitem__ and self.place(args[0]) == ON_DEVICE:
            return  # a device tensor indexed by host indices
        on_device = [t for t in inputs if self.place(t) == ON_DEVICE]
        on_host = [t for t in inputs if self.place(t) == HOST and t.dim() > 0]
        if on_device and on_host:
            raise DeviceMismatch(
                f"{_name(func)}: expected all tensors to be on the same device, found a device "
                f"tensor {tuple(on_device[0].shape)} and a host tensor "
                f"{tuple(on_host[0].shape)}")

    def _move(self, func, args: tuple, kwargs: dict) -> torch.Tensor:
        """.to / .cpu / .cuda: the result is a new tensor where the call puts it."""
        t, rest = args[0], list(args[1:])
        if func is torch.Tensor.cpu:
            target = HOST
        elif func is torch.Tensor.cuda:
            target, rest = ON_DEVICE, []
        elif rest and isinstance(rest[0], torch.Tensor):  # .to(other): other's place and dtype
            target, kwargs = self.place(rest[0]), {**kwargs, "dtype": rest[0].dtype}
            rest = rest[1:]
        else:
            device, dtype, _, _ = torch._C._nn._parse_to(*rest, **kwargs)
            kwargs.pop("device", None)
            rest = [] if dtype is None else [dtype]
            kwargs.pop("dtype", None)
            target = self.place(t) if device is None else _place(device)
        out = torch.Tensor.to(t, *rest, **{k: v for k, v in kwargs.items()
                                            if k in ("dtype", "copy", "memory_format")})
        if target != self.place(t) and out is t:
            out = t.clone()  # a copy to the other device is a new tensor
        self._mark(out, target)
        return out


def _name(func) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", str(func))
