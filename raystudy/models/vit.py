"""ViT for small datasets (Lee, Lee & Song 2021, arXiv 2112.13492): shifted patch tokenisation (SPT)
and locality self-attention (LSA), as in the vit-pytorch ``vit_for_small_dataset`` the paper's
authors trained (image 32, patch 4, dim 512, depth 6, heads 6 of dim 64, MLP 256).

Attention is written out (matmul, mask, softmax) rather than a fused scaled-dot-product kernel: LSA
needs the diagonal mask and the learned temperature anyway, and explicit ops have the vmap,
forward-mode and double-backward rules that SAM-sharpness and Hessian-vector products use.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import image_shape, register_model

# F.pad amounts (left, right, top, bottom) in units of the shift s; a positive left pad moves the
# content right. "cardinal": the authors' code (vit-pytorch), s = 1 pixel right, left, down, up.
# "diagonal": the paper's SPT, s = patch_size // 2, in the order of Lee et al.'s code: content
# moved right-down, left-down, right-up, left-up (out[i, j] = x[i -+ s, j -+ s]).
SHIFTS: dict[str, tuple[tuple[int, int, int, int], ...]] = {
    "cardinal": ((1, -1, 0, 0), (-1, 1, 0, 0), (0, 0, 1, -1), (0, 0, -1, 1)),
    "diagonal": ((1, -1, 1, -1), (-1, 1, 1, -1), (1, -1, -1, 1), (-1, 1, -1, 1)),
}


class ShiftedPatchTokens(nn.Module):
    """SPT: the image and its four shifted copies (zero fill) stacked to 5C channels, cut into
    p x p patches flattened in (row, column, channel) order, then LayerNorm -> Linear(5 C p^2, dim).
    (N, C, H, W) -> (N, H W / p^2, dim)."""

    def __init__(self, in_chans: int, patch_size: int, dim: int, shifts: str) -> None:
        super().__init__()
        step = 1 if shifts == "cardinal" else patch_size // 2
        self.pads = [tuple(step * a for a in pad) for pad in SHIFTS[shifts]]
        self.patch_size = patch_size
        patch_dim = 5 * in_chans * patch_size**2
        self.norm = nn.LayerNorm(patch_dim)
        self.proj = nn.Linear(patch_dim, dim)

    def shifted(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, 5C, H, W): x, then its four shifts (zero-filled, same size)."""
        return torch.cat([x, *(F.pad(x, pad) for pad in self.pads)], dim=1)

    def patches(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, (H/p)(W/p), p*p*C): patches in row-major order, each flattened (p1 p2 c)."""
        n, c, h, w = x.shape
        p = self.patch_size
        x = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(n, (h // p) * (w // p), p * p * c)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.norm(self.patches(self.shifted(x))))


class LocalitySelfAttention(nn.Module):
    """Multi-head attention with a learnable softmax temperature (``exp(temperature)`` scales the
    scores; initialised at log(dim_head^-0.5), standard attention's scale) and the diagonal of the
    scores masked out, so no token attends to itself. ``attend`` (an ``nn.Softmax``) outputs the
    (N, heads, T, T) attention weights, for hooks. (N, T, dim) -> (N, T, dim); cost O(T^2 heads dim_head).
    """

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.temperature = nn.Parameter(torch.tensor(math.log(dim_head**-0.5)))
        self.qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.attend = nn.Softmax(dim=-1)
        self.proj = nn.Linear(heads * dim_head, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        n, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4).unbind(0)
        scores = (q @ k.transpose(-2, -1)) * self.temperature.exp()
        self_pairs = torch.eye(t, dtype=torch.bool, device=scores.device)
        # The most negative finite value (not -inf): softmax gives exactly 0 there, gradients stay finite.
        scores = scores.masked_fill(self_pairs, -torch.finfo(scores.dtype).max)
        out = self.attend(scores) @ v
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(n, t, self.heads * self.dim_head)))


class Block(nn.Module):
    """Pre-norm transformer block: x + LSA(LN(x)), then x + MLP(LN(x)) (timm ``Mlp``: Linear-GELU-Linear)."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        from timm.layers import Mlp  # lazy: importing timm costs seconds

        self.norm1 = nn.LayerNorm(dim)
        self.attn = LocalitySelfAttention(dim, heads, dim_head, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_dim, act_layer=nn.GELU, drop=dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SmallDataViT(nn.Module):
    """SPT tokens + a cls token + learned position embeddings -> ``depth`` blocks -> LayerNorm of the
    cls token (``forward_features``, (N, dim)) -> ``classifier`` Linear(dim, out_dim).

    Initialised as vit-pytorch (the authors' code): position embeddings and cls token N(0, 1),
    Linears and LayerNorms with PyTorch's defaults.
    """

    def __init__(self, *, in_chans: int, image_hw: tuple[int, int], patch_size: int, out_dim: int, dim: int,
                 depth: int, heads: int, dim_head: int, mlp_dim: int, dropout: float, shifts: str) -> None:
        super().__init__()
        n_patches = (image_hw[0] // patch_size) * (image_hw[1] // patch_size)
        self.patch_embed = ShiftedPatchTokens(in_chans, patch_size, dim, shifts)
        self.pos_embed = nn.Parameter(torch.randn(1, n_patches + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_drop = nn.Dropout(dropout)  # the authors' emb_dropout, set to their dropout
        self.blocks = nn.Sequential(*[Block(dim, heads, dim_head, mlp_dim, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, out_dim)

    def forward_features(self, x: Tensor) -> Tensor:
        """The normalised cls token after the last block, ``(N, dim)``."""
        tokens = self.patch_embed(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = self.pos_drop(torch.cat([cls, tokens], dim=1) + self.pos_embed)
        return self.norm(self.blocks(tokens)[:, 0])

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x))


@register_model
def vit_small_data(
    *,
    in_shape: tuple[int, ...],
    out_dim: int,
    image_size: int | None = None,
    patch_size: int = 4,
    dim: int = 512,
    depth: int = 6,
    heads: int = 6,
    dim_head: int = 64,
    mlp_dim: int = 256,
    dropout: float = 0.0,
    shifts: str = "cardinal",
) -> SmallDataViT:
    """The protocol's small-data ViT; 6,475,248 parameters for 3x32x32 inputs and 10 classes.

    The image size is the task's (``in_shape`` = (C, H, W)); ``image_size``, if given, must match
    it. H and W must be multiples of ``patch_size``. ``dropout`` applies after the embeddings, the
    attention output projection and both MLP layers (the authors set emb_dropout = dropout).
    ``shifts``: "cardinal" (the authors' code: 1-pixel shifts right/left/down/up) or "diagonal"
    (Lee et al.'s paper: half-patch shifts along the four diagonals).
    """
    c, h, w = image_shape(in_shape, "vit_small_data")
    if image_size is not None and (h, w) != (image_size, image_size):
        raise ValueError(f"vit_small_data: image_size={image_size} but the task's images are {h}x{w}")
    sizes = {"patch_size": patch_size, "dim": dim, "depth": depth, "heads": heads,
             "dim_head": dim_head, "mlp_dim": mlp_dim}
    bad = [f"{k}={v!r}" for k, v in sizes.items() if not isinstance(v, int) or v < 1]
    if bad:
        raise ValueError(f"vit_small_data: {', '.join(bad)} must be positive integers")
    if h % patch_size or w % patch_size:
        raise ValueError(f"vit_small_data: the {h}x{w} image is not divisible by patch_size={patch_size}")
    if shifts not in SHIFTS:
        raise ValueError(f"vit_small_data: unknown shifts {shifts!r}; known: {', '.join(SHIFTS)}")
    if shifts == "diagonal" and patch_size < 2:
        raise ValueError("vit_small_data: diagonal shifts are half a patch and need patch_size >= 2")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"vit_small_data: dropout must be in [0, 1), got {dropout}")
    return SmallDataViT(in_chans=c, image_hw=(h, w), patch_size=patch_size, out_dim=out_dim, dim=dim, depth=depth,
                        heads=heads, dim_head=dim_head, mlp_dim=mlp_dim, dropout=dropout, shifts=shifts)
