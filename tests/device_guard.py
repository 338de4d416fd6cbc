"""A simulated GPU for CPU-only CI: inside `on_simulated_gpu(model)` the model's parameters and buffers say they are on
cuda:0 while they compute on the CPU, and an op that mixes them with the caller's CPU tensors raises, as CUDA does
("Expected all tensors to be on the same device"). Code that moves its inputs to where the model is runs through.

The mode sees every torch call (`.device` included) and keeps a mark on each tensor that is on the simulated GPU: the
model's own, what `.to(gpu)`, `.cuda()` or a factory with `device=` cuda made, and the results of ops on marked
tensors. As on CUDA, a CPU scalar (0-dim) may join a GPU op, indexing takes CPU indices and `copy_` crosses devices.
Build models before entering: a new `nn.Parameter` starts unmarked, on the CPU.
"""

from __future__ import annotations

import contextlib
import itertools

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

GPU = torch.device("cuda", 0)
CPU = torch.device("cpu")
_MARK = "_on_simulated_gpu"
_DEVICE_GETTER = torch.Tensor.device.__get__
_CROSS_DEVICE = {torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.copy_}  # CUDA moves what it needs
_TO_NUMPY = {torch.Tensor.numpy, torch.Tensor.__array__}


def on_gpu(tensor: torch.Tensor) -> bool:
    return getattr(tensor, _MARK, False)


def _target_device(func, args, kwargs) -> torch.device | None:
    """Where a move or a factory puts its result (None: not a move, or `.to` a dtype only)."""
    if func is torch.Tensor.cpu:
        return CPU
    if func is torch.Tensor.cuda:
        return GPU
    if func is torch.Tensor.to:
        device = torch._C._nn._parse_to(*args[1:], **kwargs)[0]
    else:
        device = kwargs.get("device")
    return None if device is None else torch.device(device)


class SimulatedGPU(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func == _DEVICE_GETTER:
            return GPU if on_gpu(args[0]) else func(*args)
        target = _target_device(func, args, kwargs)
        if target is not None:
            return self._place(func, args, kwargs, target)
        if func in _TO_NUMPY and on_gpu(args[0]):
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                            "to host memory first.")
        tensors = [leaf for leaf in tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)]
        if func in _CROSS_DEVICE:
            gpu = on_gpu(args[0])
        else:
            gpu = any(on_gpu(tensor) for tensor in tensors)
            if gpu and any(not on_gpu(tensor) and tensor.dim() > 0 for tensor in tensors):
                raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                                   f"{GPU} and cpu! (in {getattr(func, '__name__', func)}, on the simulated GPU)")
        result = func(*args, **kwargs)
        if gpu:  # in-place ops return an input, which keeps its mark
            for output in tree_leaves(result):
                if isinstance(output, torch.Tensor) and not any(output is tensor for tensor in tensors):
                    setattr(output, _MARK, True)
        return result

    @staticmethod
    def _place(func, args, kwargs, target: torch.device):
        """Run a move or a factory on the CPU and mark its result with the target device."""
        if func in (torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.cuda):
            source = args[0]
            dtype = torch._C._nn._parse_to(*args[1:], **kwargs)[1] if func is torch.Tensor.to else None
            # a move across devices copies: the caller's tensor stays where it was
            result = source.to(dtype or source.dtype, copy=on_gpu(source) != (target.type == "cuda"))
        else:
            result = func(*args, **{**kwargs, "device": CPU})
        setattr(result, _MARK, target.type == "cuda")
        return result


@contextlib.contextmanager
def on_simulated_gpu(*modules: torch.nn.Module):
    """Inside: `modules`' parameters and buffers are on the simulated GPU, every other tensor on the CPU."""
    tensors = list(itertools.chain.from_iterable(itertools.chain(module.parameters(), module.buffers())
                                                 for module in modules))
    for tensor in tensors:
        setattr(tensor, _MARK, True)
    try:
        with SimulatedGPU():
            yield
    finally:
        for tensor in tensors:
            delattr(tensor, _MARK)
