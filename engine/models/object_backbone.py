"""LaRa-style object backbone: posed views -> a 3D feature volume -> coarse Gaussians.

    images (B, V, H, W, 3) + cameras (model space)
      -> image encoder (CNN, or a local DINO ViT) on RGB + Plücker rays     (B·V, C, H/s, W/s)
      -> feature volume: every voxel projects into every view and samples its features;
         voxel tokens cross-attend to those image tokens (one group of V tokens per voxel,
         plus a learned "unseen" token), mean and variance across views are appended
         (a multi-view-stereo cost volume: agreement means surface)
      -> 3D convolutional refinement (a small U-Net)
      -> up-sampled Gaussian volume -> decoder: `gaussians_per_voxel` Gaussians per voxel
         (offset within the voxel, scale, rotation, opacity, SH) and a feature per Gaussian
         for the densifier
      -> with `view_colours`, each Gaussian the views see takes their colour at its centre
         (`view_colours.py`).

DESIGN.md §8: on two cores, geometric inductive bias beats capacity, so the projection
is computed, not learned; attention only decides how to weigh the views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cameras import Cameras
from ..gaussians import Gaussians
from .config import BackboneConfig
from .photo_volume import PhotoVolume
from .silhouette import (
    dilate_alphas,
    gate_opacities,
    hull_from_samples,
    sample_alphas,
    silhouette_gate,
)
from .view_colours import recolour, view_colours


@dataclass
class BackboneOutput:
    """Coarse Gaussians of a batch, flattened per element.

    Attributes:
        gaussians: list of B model-space Gaussians, each M = gaussians_per_voxel · R³.
        features: list of B (M, feature_dim) per-Gaussian features.
    """

    gaussians: list[Gaussians]
    features: list[Tensor]


def plucker_rays(cameras: Cameras, height: int, width: int) -> Tensor:
    """(V, 6, height, width) Plücker coordinates (d, o × d) of pixel-centre rays.

    The grid is `height` x `width` over the cameras' full image, so a feature map at
    stride s gets the rays through the centres of its cells.
    """
    sx, sy = cameras.width / width, cameras.height / height
    dtype, device = cameras.fx.dtype, cameras.fx.device
    v, u = torch.meshgrid(
        (torch.arange(height, dtype=dtype, device=device) + 0.5) * sy,
        (torch.arange(width, dtype=dtype, device=device) + 0.5) * sx,
        indexing="ij",
    )
    x = (u[None] - cameras.cx[:, None, None]) / cameras.fx[:, None, None]
    y = (v[None] - cameras.cy[:, None, None]) / cameras.fy[:, None, None]
    dirs_cam = torch.stack([x, y, torch.ones_like(x)], -1)  # (V, h, w, 3)
    c2w = cameras.camera_to_world
    dirs = dirs_cam @ c2w[:, None, :3, :3].transpose(-1, -2)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = c2w[:, None, None, :3, 3].expand_as(dirs)
    moment = torch.cross(origins, dirs, dim=-1)
    return torch.cat([dirs, moment], -1).permute(0, 3, 1, 2)


class ResBlock(nn.Module):
    """Pre-activation residual block (GroupNorm, GELU, 3x3 conv, twice) in 2 or 3 dims."""

    def __init__(self, channels: int, dims: int) -> None:
        super().__init__()
        conv = {2: nn.Conv2d, 3: nn.Conv3d}[dims]
        self.body = nn.Sequential(
            nn.GroupNorm(8, channels),
            nn.GELU(),
            conv(channels, channels, 3, padding=1),
            nn.GroupNorm(8, channels),
            nn.GELU(),
            conv(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class CNNEncoder(nn.Module):
    """RGB + Plücker rays -> features at stride 4 (trained from scratch)."""

    stride = 4

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.net = nn.Sequential(
            nn.Conv2d(3 + 6, half, 5, stride=2, padding=2),
            ResBlock(half, 2),
            nn.Conv2d(half, channels, 3, stride=2, padding=1),
            ResBlock(channels, 2),
            ResBlock(channels, 2),
        )

    def forward(self, images: Tensor, rays: Tensor) -> Tensor:
        """images (N, 3, H, W), rays (N, 6, H, W) -> (N, C, H/4, W/4)."""
        return self.net(torch.cat([images * 2 - 1, rays], 1))


class DinoEncoder(nn.Module):
    """A DINO ViT from a local torch hub checkout; Plücker rays are added to its patch
    tokens by a learned projection, as in LaRa.

    `pretrained=False` (the default, and what loading our weights uses: they hold the
    ViT's parameters) builds the architecture only, so the hub code fetches nothing.
    `pretrained=True` asks the hub entry point for its own pretrained weights, which
    DINOv2's hubconf downloads when they are not in torch.hub's cache: only `gd train`
    starting a "dino" model without `--init` asks for that.
    """

    def __init__(
        self, channels: int, repo_dir: str, model: str = "dinov2_vits14", pretrained: bool = False
    ) -> None:
        super().__init__()
        self.vit = torch.hub.load(repo_dir, model, source="local", pretrained=pretrained)
        self.stride = self.vit.patch_size
        self.proj = nn.Conv2d(self.vit.embed_dim, channels, 1)
        self.ray_proj = nn.Conv2d(6, channels, 1)

    def forward(self, images: Tensor, rays: Tensor) -> Tensor:
        n, _, h, w = images.shape
        mean = images.new_tensor([0.485, 0.456, 0.406])[:, None, None]
        std = images.new_tensor([0.229, 0.224, 0.225])[:, None, None]
        tokens = self.vit.forward_features((images - mean) / std)["x_norm_patchtokens"]
        gh, gw = h // self.stride, w // self.stride
        feats = tokens.transpose(1, 2).reshape(n, -1, gh, gw)
        rays = F.interpolate(rays, size=(gh, gw), mode="area")
        return self.proj(feats) + self.ray_proj(rays)


def fourier(x: Tensor, frequencies: int) -> Tensor:
    """(..., D) -> (..., D·2·frequencies) sin/cos features at octave frequencies."""
    freqs = 2.0 ** torch.arange(frequencies, dtype=x.dtype, device=x.device) * math.pi
    angles = x[..., None] * freqs
    return torch.cat([angles.sin(), angles.cos()], -1).flatten(-2)


class ObjectBackbone(nn.Module):
    """Posed views -> coarse model-space Gaussians and per-Gaussian features."""

    def __init__(self, cfg: BackboneConfig, pretrained_encoder: bool = False) -> None:
        """`pretrained_encoder`: a "dino" encoder starts from the hub's pretrained weights
        (see `DinoEncoder`); ignored by "cnn"."""
        super().__init__()
        self.cfg = cfg
        c, d = cfg.image_channels, cfg.volume_channels
        if cfg.encoder == "cnn":
            self.encoder: nn.Module = CNNEncoder(c)
        elif cfg.encoder == "dino":
            if not cfg.dino_repo:
                raise ValueError("encoder 'dino' needs dino_repo: a local torch hub checkout")
            self.encoder = DinoEncoder(c, cfg.dino_repo, cfg.dino_model, pretrained_encoder)
        else:
            raise ValueError(f"unknown encoder {cfg.encoder!r}; expected 'cnn' or 'dino'")
        # Per-view token: encoder feature, raw RGB at the voxel's projection, depth of the
        # voxel in that view (relative), and the viewing direction.
        self.view_token = nn.Sequential(nn.Linear(c + 3 + 1 + 3, d), nn.GELU(), nn.Linear(d, d))
        if cfg.silhouette:
            # The silhouette prior enters as additions that start at zero, so a model
            # trained without it starts from exactly its old output (`--init`).
            self.alpha_token = nn.Linear(1, d)
            self.hull_in = nn.Linear(2, d)
            for layer in (self.alpha_token, self.hull_in):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        self.query = nn.Linear(3 * 2 * cfg.pos_frequencies, d)
        self.unseen = nn.Parameter(torch.zeros(1, 1, 2 * d))
        self.kv = nn.Linear(d, 2 * d)
        self.heads = cfg.heads
        self.attn_out = nn.Linear(d, d)
        self.fuse = nn.Linear(d + 2 * d, d)
        self.down = nn.Conv3d(d, 2 * d, 3, stride=2, padding=1)
        self.mid = nn.Sequential(*[ResBlock(2 * d, 3) for _ in range(cfg.mid_blocks)])
        self.up = nn.ConvTranspose3d(2 * d, d, 2, stride=2)
        self.refine = nn.Sequential(*[ResBlock(d, 3) for _ in range(cfg.refine_blocks)])
        u = cfg.gaussian_channels
        self.to_gaussian_volume = nn.ConvTranspose3d(d, u, cfg.upsample, stride=cfg.upsample)
        self.gaussian_refine = nn.Sequential(
            nn.GroupNorm(8, u), nn.GELU(), nn.Conv3d(u, u, 3, padding=1)
        )
        if cfg.photo_volume:
            self.photo = PhotoVolume(c, u)
        k = cfg.gaussians_per_voxel
        self.num_sh = (cfg.sh_degree + 1) ** 2
        self.per_gaussian = 3 + 3 + 4 + 1 + 3 * self.num_sh
        self.decoder = nn.Conv3d(u, k * (self.per_gaussian + cfg.feature_dim), 1)
        self._init_decoder()

    def _init_decoder(self) -> None:
        # Start near "a faint blob at every voxel centre" so early renders have gradients
        # everywhere instead of a few saturated Gaussians.
        nn.init.normal_(self.decoder.weight, std=1e-3)
        nn.init.zeros_(self.decoder.bias)

    def adapt_init_state(self, state: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
        """`state` (another backbone's weights, keys under `prefix`) made loadable here
        when the two differ only in the Gaussian volume's up-sampling factor.

        The up-sampling transposed convolution's kernel is resampled from the old factor's
        sub-voxel positions to the new ones (linear interpolation along each axis), so
        every new Gaussian-volume voxel starts with the features of the old one it lies
        in; every later layer works per voxel or with 3³ kernels and carries over as is.
        Decoded offsets and scales are in voxels, so Gaussians start at the new, smaller
        voxel's size. Returns a new dict; other keys are untouched.
        """
        key = prefix + "to_gaussian_volume.weight"
        old = state.get(key)
        new = self.cfg.upsample
        if old is None or old.shape[-1] == new:
            return state
        f = old.shape[-1]
        # Sub-voxel centres at (i + 0.5) / n of the coarse voxel, for the old and new n.
        pos = (torch.arange(new, dtype=torch.float32) + 0.5) / new * f - 0.5
        lo = pos.floor().clamp(0, f - 1).long()
        hi = (lo + 1).clamp(max=f - 1)
        t = (pos - lo.to(pos.dtype)).clamp(0, 1)
        w = old.float()
        for axis in (2, 3, 4):
            shape = [1] * 5
            shape[axis] = new
            a = w.index_select(axis, lo)
            b = w.index_select(axis, hi)
            w = a + (b - a) * t.view(shape)
        out = dict(state)
        out[key] = w.to(old.dtype)
        return out

    @property
    def voxel_size(self) -> float:
        """Side of a Gaussian-volume voxel in model units."""
        return 2 * self.cfg.extent / (self.cfg.resolution * self.cfg.upsample)

    def grid(self, resolution: int, device: torch.device) -> Tensor:
        """(R³, 3) voxel centres of a resolution³ grid over [-extent, extent]³, x fastest
        varying last so `.view(R, R, R, 3)` is indexed [z, y, x] like Conv3d's D, H, W."""
        e = self.cfg.extent
        t = (torch.arange(resolution, device=device, dtype=torch.float32) + 0.5) / resolution
        t = (2 * t - 1) * e
        z, y, x = torch.meshgrid(t, t, t, indexing="ij")
        return torch.stack([x, y, z], -1).reshape(-1, 3)

    def forward(
        self, images: Tensor, cameras: list[Cameras], alphas: Tensor | None = None
    ) -> BackboneOutput:
        """images: (B, V, H, W, 3) in [0, 1] on white; cameras: B model-space Cameras of V
        views; alphas: (B, V, H, W) coverage (None: unknown, i.e. all ones), read only by a
        `silhouette` backbone."""
        b, v, h, w, _ = images.shape
        if alphas is None:
            alphas = images.new_ones(b, v, h, w)
        cfg = self.cfg
        device = images.device
        flat = images.reshape(b * v, h, w, 3).permute(0, 3, 1, 2)
        rays = torch.cat([plucker_rays(cams.to(device=device), h, w) for cams in cameras])
        feats = self.encoder(flat, rays.to(flat.dtype))  # (B·V, C, h', w')
        # Sample features and RGB at every voxel's projection.
        r = cfg.resolution
        centres = self.grid(r, device)  # (G, 3)
        tokens, valid = [], []
        for bi, cams in enumerate(cameras):
            cams = cams.to(device=device)
            pix, depth = cams.project(centres)  # (V, G, 2), (V, G)
            grid = torch.stack([pix[..., 0] / w * 2 - 1, pix[..., 1] / h * 2 - 1], -1)
            grid = grid.to(feats.dtype)[:, :, None]  # (V, G, 1, 2)
            fmap = feats[bi * v : (bi + 1) * v]
            sampled = F.grid_sample(fmap, grid, align_corners=False).squeeze(-1)  # (V, C, G)
            rgb = F.grid_sample(flat[bi * v : (bi + 1) * v], grid, align_corners=False)
            rgb = rgb.squeeze(-1)  # (V, 3, G)
            centers = cams.centers.to(centres)
            view_dir = centres[None] - centers[:, None]  # (V, G, 3)
            dist = view_dir.norm(dim=-1, keepdim=True)
            rel_depth = dist - dist.mean(1, keepdim=True)
            tok = torch.cat(
                [sampled.transpose(1, 2), rgb.transpose(1, 2), rel_depth, view_dir / dist], -1
            )  # (V, G, C+7)
            inside = (grid.abs() <= 1).all(-1).squeeze(-1) & (depth > 0)
            tokens.append(tok.transpose(0, 1))  # (G, V, C+7)
            valid.append(inside.T)  # (G, V)
        tok = self.view_token(torch.stack(tokens).to(feats.dtype))  # (B, G, V, D)
        ok = torch.stack(valid)  # (B, G, V)
        hull = None
        if cfg.silhouette:
            sampled, hull = [], []
            for bi, cams in enumerate(cameras):
                cams = cams.to(device=device)
                a, framed = sample_alphas(centres, alphas[bi], cams)
                hull.append(hull_from_samples(a, framed))  # (G, 2)
                a = torch.where(framed, a, torch.zeros_like(a))  # unframed: nothing seen
                sampled.append(a.T[..., None])  # (G, V, 1)
            tok = tok + self.alpha_token(torch.stack(sampled).to(tok.dtype))
        volume = self._aggregate(tok, ok, centres)  # (B, G, D)
        if hull is not None:
            volume = volume + self.hull_in(torch.stack(hull).to(volume.dtype))
        d = volume.shape[-1]
        x = volume.transpose(1, 2).reshape(b, d, r, r, r)
        x = x + self.up(self.mid(self.down(x)))
        x = self.refine(x)
        x = self.to_gaussian_volume(x)
        if cfg.photo_volume:
            x = x + self._photo_volume(flat, feats, alphas, cameras, x.shape[-1])
        x = self.gaussian_refine(x)
        out = self.decoder(x)  # (B, k·(P+F), R', R', R')
        decoded = self._decode(out)
        if cfg.silhouette:
            gated = []
            for bi, (g, cams) in enumerate(zip(decoded.gaussians, cameras, strict=True)):
                masks = dilate_alphas(alphas[bi], cfg.gate_dilation)
                gated.append(gate_opacities(g, silhouette_gate(g.means, masks, cams.to(device))))
            decoded = BackboneOutput(gated, decoded.features)
        if cfg.view_colours:
            tolerance = cfg.view_colour_tolerance * self.voxel_size
            coloured = []
            for bi, (g, cams) in enumerate(zip(decoded.gaussians, cameras, strict=True)):
                colours, seen = view_colours(g, images[bi], cams.to(device), tolerance)
                coloured.append(recolour(g, colours, seen))
            decoded = BackboneOutput(coloured, decoded.features)
        return decoded

    def _photo_volume(
        self, flat: Tensor, feats: Tensor, alphas: Tensor, cameras: list[Cameras], res: int
    ) -> Tensor:
        """(B, U, res, res, res): `PhotoVolume` at the Gaussian volume's voxel centres.

        flat: (B·V, 3, H, W) views, feats: (B·V, C, h, w) their encoder features, alphas:
        (B, V, H, W)."""
        v = alphas.shape[1]
        points = self.grid(res, flat.device)
        added = []
        for bi, cams in enumerate(cameras):
            views = slice(bi * v, (bi + 1) * v)
            cams = cams.to(device=flat.device)
            added.append(self.photo(points, flat[views], feats[views], alphas[bi], cams))
        out = torch.stack(added)  # (B, res³, U)
        return out.transpose(1, 2).reshape(len(cameras), -1, res, res, res)

    def _aggregate(self, tok: Tensor, ok: Tensor, centres: Tensor) -> Tensor:
        """Voxel tokens cross-attend to their V view tokens; mean/variance appended.

        tok: (B, G, V, D) view tokens, ok: (B, G, V) validity -> (B, G, D).
        """
        b, g, v, d = tok.shape
        heads = self.heads
        q = self.query(fourier(centres, self.cfg.pos_frequencies))  # (G, D)
        q = q[None].expand(b, g, d).reshape(b * g, 1, heads, d // heads).transpose(1, 2)
        kv = torch.cat([self.unseen.expand(b * g, 1, 2 * d), self.kv(tok.reshape(b * g, v, d))], 1)
        k, val = kv.split(d, -1)
        k = k.reshape(b * g, v + 1, heads, d // heads).transpose(1, 2)
        val = val.reshape(b * g, v + 1, heads, d // heads).transpose(1, 2)
        mask = torch.cat([ok.new_ones(b, g, 1), ok], -1).reshape(b * g, 1, 1, v + 1)
        att = F.scaled_dot_product_attention(q, k, val, attn_mask=mask)
        att = self.attn_out(att.transpose(1, 2).reshape(b, g, d))
        w = ok[..., None].to(tok.dtype)
        count = w.sum(2).clamp_min(1.0)
        mean = (tok * w).sum(2) / count
        var = ((tok - mean[:, :, None]).square() * w).sum(2) / count
        return self.fuse(torch.cat([att, mean, var], -1))

    def _decode(self, out: Tensor) -> BackboneOutput:
        cfg = self.cfg
        b = out.shape[0]
        k, p, f = cfg.gaussians_per_voxel, self.per_gaussian, cfg.feature_dim
        res = out.shape[-1]
        out = out.reshape(b, k, p + f, res**3).permute(0, 3, 1, 2).reshape(b, res**3 * k, p + f)
        centres = self.grid(res, out.device).repeat_interleave(k, 0)  # (M, 3)
        voxel = self.voxel_size
        gaussians, features = [], []
        for bi in range(b):
            raw = out[bi]
            offset, log_scale, quat, opacity, sh = raw[:, :p].split(
                [3, 3, 4, 1, 3 * self.num_sh], -1
            )
            means = centres + cfg.offset_range * voxel * torch.tanh(offset)
            log_scales = log_scale + math.log(cfg.scale_prior * voxel)
            quats = quat + quat.new_tensor([1.0, 0.0, 0.0, 0.0])
            sh = sh.reshape(-1, self.num_sh, 3)
            # DC starts at mid grey (colour 0.5 -> SH 0).
            gaussians.append(
                Gaussians.unchecked(means, log_scales, quats, opacity[:, 0] + cfg.opacity_bias, sh)
            )
            features.append(raw[:, p:])
        return BackboneOutput(gaussians, features)
