"""The `Gaussians` container: raw (optimisable) parameters and their activations.

Conventions (DESIGN.md §4):
    means           (N, 3)        world positions, Z up
    log_scales      (N, 3)        log of the per-axis standard deviations
    quats           (N, 4)        rotations, w x y z; any non-zero norm (normalised on use)
    opacity_logits  (N,)          sigmoid gives opacity in (0, 1)
    sh              (N, K, 3)     SH coefficients, K = (degree + 1)², DC first;
                                  colour = max(SH · basis + 0.5, 0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .devices import TensorBundle
from .rotations import normalize_quaternions, quaternion_to_matrix

SH_C0 = 0.28209479177387814
MAX_SH_DEGREE = 3


class GaussiansError(ValueError):
    """Raised when Gaussian parameters have wrong shapes or non-finite values."""


def sh_degree_from_coeffs(num_coeffs: int) -> int:
    """SH degree d such that (d + 1)² == num_coeffs; raises if there is none."""
    degree = math.isqrt(num_coeffs) - 1
    if degree < 0 or (degree + 1) ** 2 != num_coeffs or degree > MAX_SH_DEGREE:
        raise GaussiansError(
            f"SH coefficient count {num_coeffs} is not (d+1)^2 for a degree d in 0..{MAX_SH_DEGREE}"
        )
    return degree


def rgb_to_sh_dc(rgb: Tensor) -> Tensor:
    """DC SH coefficient that renders as `rgb` (..., 3) from every direction."""
    return (rgb - 0.5) / SH_C0


def sh_dc_to_rgb(dc: Tensor) -> Tensor:
    """Inverse of `rgb_to_sh_dc` (no clamping)."""
    return dc * SH_C0 + 0.5


@dataclass
class Gaussians(TensorBundle):
    """A set of N 3D Gaussians. Construct directly or with `from_activated`.

    The constructor validates shapes and finiteness (see `validate`); pass
    `validate=False` to `Gaussians.unchecked` in hot loops where the values are
    known to be good.
    """

    means: Tensor
    log_scales: Tensor
    quats: Tensor
    opacity_logits: Tensor
    sh: Tensor

    def __post_init__(self) -> None:
        self.validate()

    _lead = "means"  # device and dtype (TensorBundle)

    # ------------------------------------------------------------------ creation
    @classmethod
    def unchecked(
        cls, means: Tensor, log_scales: Tensor, quats: Tensor, opacity_logits: Tensor, sh: Tensor
    ) -> Gaussians:
        """Build without validation (for internal code whose outputs are known-good)."""
        obj = cls.__new__(cls)
        obj.means, obj.log_scales, obj.quats = means, log_scales, quats
        obj.opacity_logits, obj.sh = opacity_logits, sh
        return obj

    @classmethod
    def from_activated(
        cls,
        means: Tensor,
        scales: Tensor,
        quats: Tensor,
        opacities: Tensor,
        colors: Tensor | None = None,
        sh: Tensor | None = None,
    ) -> Gaussians:
        """Build from activated values.

        Args:
            means: (N, 3). scales: (N, 3) positive std-devs. quats: (N, 4) wxyz.
            opacities: (N,) in (0, 1). colors: (N, 3) RGB in [0, 1] (becomes SH DC),
            or sh: (N, K, 3) coefficients.
        """
        if (colors is None) == (sh is None):
            raise GaussiansError("give exactly one of `colors` or `sh`")
        if sh is None:
            sh = rgb_to_sh_dc(colors)[:, None, :]
        eps = torch.finfo(opacities.dtype).eps
        opacities = opacities.clamp(eps, 1 - eps)
        return cls(
            means=means,
            log_scales=torch.log(scales),
            quats=quats,
            opacity_logits=torch.logit(opacities),
            sh=sh,
        )

    @classmethod
    def empty(
        cls, sh_degree: int = 0, device: torch.device | str = "cpu", dtype=torch.float32
    ) -> Gaussians:
        k = (sh_degree + 1) ** 2
        z = lambda *s: torch.zeros(*s, device=device, dtype=dtype)  # noqa: E731
        return cls(z(0, 3), z(0, 3), z(0, 4), z(0), z(0, k, 3))

    @classmethod
    def isotropic(
        cls, means: Tensor, log_scale: float, opacity_logit: float, sh: Tensor
    ) -> Gaussians:
        """Round, unrotated Gaussians at `means` (N, 3), all of one size and opacity, with
        coefficients `sh` (N, K, 3); the other tensors take the means' dtype and device."""
        n = means.shape[0]
        log_scales = means.new_full((n, 3), log_scale)
        quats = means.new_tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1)
        return cls(means, log_scales, quats, means.new_full((n,), opacity_logit), sh)

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise `GaussiansError` on wrong shapes/dtypes/devices, NaN/Inf or zero quaternions."""
        tensors = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, t in tensors.items():
            if not isinstance(t, Tensor):
                raise GaussiansError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if not t.is_floating_point():
                raise GaussiansError(f"{name} must be floating point, got {t.dtype}")
        n = self.means.shape[0] if self.means.ndim == 2 else -1
        expected = {
            "means": (n, 3),
            "log_scales": (n, 3),
            "quats": (n, 4),
            "opacity_logits": (n,),
        }
        if self.means.ndim != 2 or self.means.shape[1] != 3:
            raise GaussiansError(f"means must have shape (N, 3), got {tuple(self.means.shape)}")
        for name, shape in expected.items():
            if tuple(tensors[name].shape) != shape:
                raise GaussiansError(
                    f"{name} must have shape {shape} for N={n}, got {tuple(tensors[name].shape)}"
                )
        if self.sh.ndim != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3:
            raise GaussiansError(f"sh must have shape (N={n}, K, 3), got {tuple(self.sh.shape)}")
        sh_degree_from_coeffs(self.sh.shape[1])
        devices = {t.device for t in tensors.values()}
        dtypes = {t.dtype for t in tensors.values()}
        if len(devices) > 1 or len(dtypes) > 1:
            raise GaussiansError(
                f"all parameters must share device and dtype, got {devices} {dtypes}"
            )
        for name, t in tensors.items():
            bad = ~torch.isfinite(t.detach())
            if bad.any():
                rows = bad.reshape(n, -1).any(dim=1).nonzero().flatten()
                raise GaussiansError(
                    f"{name} has {int(rows.numel())} Gaussian(s) with NaN/Inf values "
                    f"(first at index {int(rows[0])})"
                )
        zero = self.quats.detach().norm(dim=-1) < 1e-12
        if zero.any():
            raise GaussiansError(
                f"{int(zero.sum())} quaternion(s) have zero norm (first at index "
                f"{int(zero.nonzero()[0, 0])}); rotations must be non-zero"
            )

    # ------------------------------------------------------------------ shape info
    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return sh_degree_from_coeffs(self.sh.shape[1])

    def degree_for(self, sh_degree: int | None) -> int:
        """The SH degree a render evaluates: `sh_degree` capped at the Gaussians' own (their
        own when None)."""
        return self.sh_degree if sh_degree is None else min(sh_degree, self.sh_degree)

    # ------------------------------------------------------------------ activations
    @property
    def scales(self) -> Tensor:
        """(N, 3) standard deviations along the local axes."""
        return torch.exp(self.log_scales)

    @property
    def opacities(self) -> Tensor:
        """(N,) opacities in (0, 1)."""
        return torch.sigmoid(self.opacity_logits)

    @property
    def rotations(self) -> Tensor:
        """(N, 4) unit quaternions wxyz."""
        return normalize_quaternions(self.quats)

    @property
    def rotation_matrices(self) -> Tensor:
        """(N, 3, 3) local-to-world rotations."""
        return quaternion_to_matrix(self.quats)

    @property
    def covariance_factors(self) -> Tensor:
        """(N, 3, 3) L = R S, the factor of the covariance L Lᵀ (the renderer's input)."""
        return self.rotation_matrices * self.scales[:, None, :]

    @property
    def covariances(self) -> Tensor:
        """(N, 3, 3) world covariances R S² Rᵀ."""
        m = self.covariance_factors
        return m @ m.transpose(-1, -2)

    @property
    def base_colors(self) -> Tensor:
        """(N, 3) view-independent colour from the DC term, clamped at 0 like the renderer."""
        return sh_dc_to_rgb(self.sh[:, 0, :]).clamp_min(0.0)

    # ------------------------------------------------------------------ transforms
    def _map(self, fn) -> Gaussians:
        return Gaussians.unchecked(*(fn(getattr(self, f.name)) for f in fields(self)))

    def to(self, device=None, dtype=None) -> Gaussians:
        return self._map(lambda t: t.to(device=device, dtype=dtype))

    def detach(self) -> Gaussians:
        return self._map(lambda t: t.detach())

    def clone(self) -> Gaussians:
        return self._map(lambda t: t.clone())

    def requires_grad_(self, requires_grad: bool = True) -> Gaussians:
        for f in fields(self):
            getattr(self, f.name).requires_grad_(requires_grad)
        return self

    def parameters(self) -> list[Tensor]:
        return [getattr(self, f.name) for f in fields(self)]

    def __getitem__(self, index) -> Gaussians:
        """Select by boolean mask (N,), integer index tensor, list or slice."""
        if isinstance(index, Tensor):
            if index.dtype == torch.bool and tuple(index.shape) != (len(self),):
                raise GaussiansError(
                    f"boolean mask must have shape ({len(self)},), got {tuple(index.shape)}"
                )
            index = index.to(self.device)
        elif isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return self._map(lambda t: t[index])

    def with_sh_degree(self, degree: int) -> Gaussians:
        """Truncate (or zero-pad) the SH coefficients to `degree`."""
        if not 0 <= degree <= MAX_SH_DEGREE:
            raise GaussiansError(f"SH degree must be in 0..{MAX_SH_DEGREE}, got {degree}")
        k = (degree + 1) ** 2
        sh = self.sh
        if sh.shape[1] >= k:
            sh = sh[:, :k]
        else:
            pad = sh.new_zeros(sh.shape[0], k - sh.shape[1], 3)
            sh = torch.cat([sh, pad], dim=1)
        return Gaussians.unchecked(self.means, self.log_scales, self.quats, self.opacity_logits, sh)

    @staticmethod
    def cat(items: Sequence[Gaussians]) -> Gaussians:
        """Concatenate; SH degrees are raised to the largest one (zero-padded)."""
        if not items:
            raise GaussiansError("cannot concatenate an empty list of Gaussians")
        degree = max(g.sh_degree for g in items)
        items = [g.with_sh_degree(degree) for g in items]
        return Gaussians(
            *(torch.cat([getattr(g, f.name) for g in items], dim=0) for f in fields(Gaussians))
        )

    def __repr__(self) -> str:
        return (
            f"Gaussians(n={len(self)}, sh_degree={self.sh_degree}, "
            f"device={self.device}, dtype={self.dtype})"
        )
