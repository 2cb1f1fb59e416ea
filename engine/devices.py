"""Choosing a torch device from a user-facing name ("auto", "cpu", "cuda", "mps"), and
`TensorBundle`, the `device` and `dtype` of a container of tensors."""

from __future__ import annotations

from typing import ClassVar

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto") -> torch.device:
    """The device for `name`; "auto" prefers CUDA, then Apple MPS, then the CPU.

    Raises ValueError when an explicitly requested device is not available.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {name!r}; choose from {DEVICE_CHOICES}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but PyTorch sees no CUDA GPU")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' requested but Apple MPS is not available")
    return torch.device(name)


class TensorBundle:
    """Mixin for a container of tensors that share one device and dtype (`Gaussians`,
    `Cameras`): both are read off the tensor attribute named by `_lead`."""

    _lead: ClassVar[str]

    @property
    def device(self) -> torch.device:
        return getattr(self, self._lead).device

    @property
    def dtype(self) -> torch.dtype:
        return getattr(self, self._lead).dtype
