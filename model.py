"""
Every nn.Module of nano-EchoJEPA, and nothing about training:

    Encoder         the V-JEPA 2 video ViT (tubelet patch embed, pre-norm blocks, 3D RoPE, final norm)
    Predictor       the JEPA predictor: context tokens + mask tokens at target positions -> target embeddings
    AttentiveProbe  the frozen-feature evaluation head (attentive pooler + linear), single- or multi-view

Attribute names equal the official checkpoint keys (facebookresearch/vjepa2, bowang-lab/EchoJEPA), so an official
state dict loads with strict=True after strip_prefixes(). See ../shared/SPEC.md sections 1, 2, 7 and 9.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# configs


@dataclass
class ViTConfig:
    name: str = "vit_quick"
    dim: int = 192               # encoder width
    depth: int = 6               # encoder blocks
    heads: int = 3               # encoder attention heads
    mlp_ratio: float = 4.0       # MLP hidden = int(dim * mlp_ratio), as the official Block
    patch_size: int = 16         # spatial patch
    tubelet_size: int = 2        # temporal patch
    in_chans: int = 3
    qkv_bias: bool = True
    rope: str = "reference"      # "reference" = layout the released weights were trained with; "interleave" = fixed
    init_std: float = 0.02
    pred_dim: int = 384          # predictor width (official: 384 for every encoder size)
    pred_depth: int = 12         # predictor blocks (official: 12)
    pred_heads: int = 12         # predictor heads (official: 12, head_dim 32)


# (official name, alias, dim, depth, heads, mlp_ratio). vit_giant here is EchoJEPA-G's `vit_giant_xformers`
# (22 heads of 64); the official code's plain `vit_giant` has 16 heads of 88 and is not used by V-JEPA 2/EchoJEPA.
_SIZES = [
    ("vit_tiny", "vitt", 192, 12, 3, 4.0),
    ("vit_small", "vits", 384, 12, 6, 4.0),
    ("vit_base", "vitb", 768, 12, 12, 4.0),
    ("vit_large", "vitl", 1024, 24, 16, 4.0),
    ("vit_huge", "vith", 1280, 32, 16, 4.0),
    ("vit_giant", "vitg", 1408, 40, 22, 48 / 11),
]
CONFIGS = {}
for _name, _alias, _d, _L, _h, _r in _SIZES:
    CONFIGS[_name] = CONFIGS[_alias] = ViTConfig(name=_name, dim=_d, depth=_L, heads=_h, mlp_ratio=_r)
CONFIGS["vit_giant_xformers"] = CONFIGS["vit_giant"]
# CPU quick-start size (ours, not official): 192 wide like vit_tiny but 6 deep, with a 96x4 predictor (3 heads of
# 32, the official head_dim) so a 2-core laptop trains it in minutes (NOTES-perf 5.2).
CONFIGS["vit_quick"] = CONFIGS["vitq"] = ViTConfig(name="vit_quick", pred_dim=96, pred_depth=4, pred_heads=3)

# -----------------------------------------------------------------------------
# 3D rotary position embedding


def rope_tables(pos, grid, head_dim, layout="reference"):
    """cos/sin tables (B or 1, 1, K, head_dim) for tokens at flat indices pos (B or 1, K) of a (T', H', W') grid.

    Per head the dims are laid out [t | h | w | unrotated rest], d_ax = 2*((head_dim//3)//2) each (64 -> 20/20/20+4).
    The unrotated rest gets angle 0 (cos 1, sin 0), so one multiply-add rotates the whole head.
    Reference quirk (vjepa2 src/models/utils/modules.py:rotate_queries_or_keys): the d_ax/2 frequencies are
    concatenated twice, [f0..fk-1, f0..fk-1], while pairs (x0,x1),(x2,x3).. are rotated. The released V-JEPA 2 and
    EchoJEPA weights were trained that way, so it is our default; layout="interleave" gives the textbook
    [f0,f0,f1,f1,..]. Angles are computed in fp32 (the reference uses the activation dtype, which under bf16
    rounds the angles; identical in fp32).
    """
    _, Hp, Wp = grid
    d = 2 * ((head_dim // 3) // 2)
    t, h, w = pos // (Hp * Wp), (pos % (Hp * Wp)) // Wp, pos % Wp  # integer grid coordinates of each token
    omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float32, device=pos.device) / (d / 2))  # (d/2,)
    angles = []
    for p in (t, h, w):
        a = p.float().unsqueeze(-1) * omega  # (B, K, d/2)
        angles.append(a.repeat(1, 1, 2) if layout == "reference" else a.repeat_interleave(2, dim=-1))  # (B, K, d)
    angles.append(torch.zeros(*pos.shape, head_dim - 3 * d, device=pos.device))  # unrotated rest
    angles = torch.cat(angles, dim=-1).unsqueeze(1)  # (B, 1, K, hs)
    sin = angles.sin()
    sin[..., 0::2] *= -1  # the sign of rot(x) below, folded into the table once per forward
    return angles.cos(), sin


def apply_rope(x, cos, sin):
    """x (..., K, hs) -> x*cos + rot(x)*sin, rot pairing adjacent dims (x0, x1) -> (-x1, x0): the pair swap is one
    flip, its minus sign lives in the table from rope_tables."""
    rot = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x0, x1) -> (x1, x0), (..., K, hs)
    return x * cos.to(x.dtype) + rot * sin.to(x.dtype)


# -----------------------------------------------------------------------------
# transformer pieces


class Attention(nn.Module):
    def __init__(self, dim, heads, qkv_bias=True):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)  # rows [q; k; v], heads contiguous (official layout)
        self.proj = nn.Linear(dim, dim)
        self.use_sdpa = True  # False -> explicit softmax attention (the slow reference, tested against SDPA)

    def forward(self, x, rope=None, mask=None):
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, nh, N, hs)
        v = qkv[2]
        q, k = apply_rope(qkv[:2], *rope) if rope is not None else qkv[:2]  # RoPE on q and k in one go, never v
        if self.use_sdpa:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, nh, N, N)
            if mask is not None:
                att = att.masked_fill(~mask, float("-inf"))
            y = att.softmax(dim=-1) @ v
        y = y.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact erf GELU, as the official Block
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim, heads, mlp_ratio=4.0, qkv_bias=True, eps=1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x, rope=None, mask=None):
        x = x + self.attn(self.norm1(x), rope, mask)
        return x + self.mlp(self.norm2(x))


def _init_weights(module, blocks, std=0.02):
    """Official init: trunc_normal(0.02) Linear/Conv weights, zero biases, LayerNorm (1, 0); then each block's
    attn.proj and mlp.fc2 weights divided by sqrt(2 * layer_id), layer_id 1-based."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv3d)):
            nn.init.trunc_normal_(m.weight, std=std, a=-2.0, b=2.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        for i, blk in enumerate(blocks):
            blk.attn.proj.weight.div_(math.sqrt(2.0 * (i + 1)))
            blk.mlp.fc2.weight.div_(math.sqrt(2.0 * (i + 1)))


def _run_blocks(blocks, x, rope, checkpoint):
    for blk in blocks:
        if checkpoint and torch.is_grad_enabled():  # activation checkpointing: recompute in backward
            x = torch.utils.checkpoint.checkpoint(blk, x, rope, use_reentrant=False)
        else:
            x = blk(x, rope)
    return x


# -----------------------------------------------------------------------------
# encoder and predictor


class PatchEmbed3D(nn.Module):
    """Tubelet embedding. The parameter is the official Conv3d (key patch_embed.proj.*), but a conv whose stride
    equals its kernel is one matmul per tubelet: we cut the clip into tubelets and multiply only the ones kept by
    idx, so a context pass embeds its 5-40 % of the tokens instead of all of them (same numbers as the conv up to
    fp32 summation order, ~1e-6; NOTES-perf: the conv was ~12 % of a CPU quick-start step)."""

    def __init__(self, in_chans, dim, patch_size, tubelet_size):
        super().__init__()
        k = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=k, stride=k)

    def forward(self, x, idx=None):
        """x (B, C, T, H, W) -> (B, N, D) tokens in (t, h, w) order, or with idx (B, K) only those (B, K, D)."""
        B, C, T, H, W = x.shape
        t, p = self.proj.kernel_size[:2]
        Tp, Hp, Wp = T // t, H // p, W // p
        x = x.view(B, C, Tp, t, Hp, p, Wp, p).permute(0, 2, 4, 6, 1, 3, 5, 7)  # (B, T', H', W', C, t, p, p), a view
        if idx is None:
            x = x.reshape(B, Tp * Hp * Wp, -1)  # (B, N, C*t*p*p)
        else:  # copy out only the kept tubelets
            b = torch.arange(B, device=idx.device).unsqueeze(1)  # (B, 1)
            x = x[b, idx // (Hp * Wp), (idx // Wp) % Hp, idx % Wp].reshape(B, idx.size(1), -1)  # (B, K, C*t*p*p)
        return F.linear(x, self.proj.weight.flatten(1), self.proj.bias)  # weight (D, C, t, p, p) -> (D, C*t*p*p)


class Encoder(nn.Module):
    """Video ViT. forward(x (B,3,T,H,W), idx (B,K) kept token indices or None) -> (B, N or K, dim)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed3D(cfg.in_chans, cfg.dim, cfg.patch_size, cfg.tubelet_size)
        self.blocks = nn.ModuleList([Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.qkv_bias) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.grad_checkpointing = False  # set True to trade ~1/3 more compute for activation memory
        _init_weights(self, self.blocks, cfg.init_std)

    def grid(self, x):
        """Token grid (T', H', W') of a clip batch, with a clear error for shapes the patch embed cannot tile."""
        B, C, T, H, W = x.shape
        c = self.cfg
        if T % c.tubelet_size or H % c.patch_size or W % c.patch_size:
            raise ValueError(f"clip of shape {tuple(x.shape)}: frames must be divisible by {c.tubelet_size} "
                             f"and height/width by {c.patch_size}")
        return T // c.tubelet_size, H // c.patch_size, W // c.patch_size

    def forward(self, x, idx=None):
        grid = self.grid(x)
        # masked tokens are dropped (never embedded), not zeroed; the kept ones keep their true positions via RoPE
        x = self.patch_embed(x, idx)  # (B, N or K, D)
        pos = torch.arange(x.size(1), device=x.device).unsqueeze(0) if idx is None else idx  # (1, N) or (B, K)
        rope = rope_tables(pos, grid, self.cfg.dim // self.cfg.heads, self.cfg.rope)
        x = _run_blocks(self.blocks, x, rope, self.grad_checkpointing)
        return self.norm(x)


class Predictor(nn.Module):
    """JEPA predictor. forward(z_ctx (B,Kc,D), idx_ctx (B,Kc), idx_tgt (B,Kt), grid (T',H',W')) -> (B, Kt, D)."""

    def __init__(self, enc_dim, dim=384, depth=12, heads=12, mlp_ratio=4.0, num_mask_tokens=10,
                 qkv_bias=True, rope="reference", init_std=0.02, out_dim=None):
        super().__init__()
        self.heads, self.rope = heads, rope
        self.predictor_embed = nn.Linear(enc_dim, dim)
        # 10 zero-initialised mask tokens, kept for checkpoint compatibility; only token 0 is used, as in
        # V-JEPA 2 / EchoJEPA (mask_index = index of the clip-size group, 0 with one group).
        self.mask_tokens = nn.ParameterList([nn.Parameter(torch.zeros(1, 1, dim)) for _ in range(num_mask_tokens)])
        self.predictor_blocks = nn.ModuleList([Block(dim, heads, mlp_ratio, qkv_bias) for _ in range(depth)])
        self.predictor_norm = nn.LayerNorm(dim, eps=1e-6)
        self.predictor_proj = nn.Linear(dim, out_dim or enc_dim)  # out_dim: pixels per tubelet for the MAE baseline
        self.grad_checkpointing = False
        _init_weights(self, self.predictor_blocks, init_std)  # leaves the mask tokens at zero

    def forward(self, z_ctx, idx_ctx, idx_tgt, grid):
        B, Kc, _ = z_ctx.shape
        x = self.predictor_embed(z_ctx)  # (B, Kc, Dp)
        tgt = self.mask_tokens[0].expand(B, idx_tgt.size(1), -1).to(x.dtype)  # (B, Kt, Dp)
        x = torch.cat([x, tgt], dim=1)  # (B, Kc+Kt, Dp)
        # The reference sorts [ctx; tgt] by token index first (argsort + a per-sample Python loop). Attention is
        # bidirectional and positions come from RoPE, so the order cannot change the result: we skip the sort.
        pos = torch.cat([idx_ctx, idx_tgt], dim=1)  # (B, Kc+Kt)
        rope = rope_tables(pos, grid, x.size(-1) // self.heads, self.rope)
        x = _run_blocks(self.predictor_blocks, x, rope, self.grad_checkpointing)
        x = self.predictor_norm(x[:, Kc:])  # only the target outputs are needed (B, Kt, Dp)
        return self.predictor_proj(x)


def build_predictor(cfg: ViTConfig, out_dim=None):
    """The predictor that goes with an encoder config (official 12x384x12 for the official sizes). With out_dim it
    is the MAE baseline's pixel decoder: mask tokens at the hidden positions, RoPE, a projection to pixels."""
    return Predictor(cfg.dim, dim=cfg.pred_dim, depth=cfg.pred_depth, heads=cfg.pred_heads, rope=cfg.rope,
                     init_std=cfg.init_std, out_dim=out_dim)


# -----------------------------------------------------------------------------
# attentive probe (frozen evaluation)


class CrossAttention(nn.Module):
    """q attends to x; separate q and kv Linears, and no output projection (official AttentivePooler)."""

    def __init__(self, dim, heads, qkv_bias=True):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)

    def forward(self, q, x, mask=None, return_attn=False):
        """(y (B, n, C), None) through SDPA; return_attn: explicit softmax(q k^T / sqrt(hs)) attention and its
        weights (B, nh, n, N) instead of None (probe.py --attn_maps; tested equal to SDPA)."""
        B, n, C = q.shape
        N, nh = x.size(1), self.heads
        q = self.q(q).view(B, n, nh, C // nh).transpose(1, 2)  # (B, nh, n, hs)
        k, v = self.kv(x).view(B, N, 2, nh, C // nh).permute(2, 0, 3, 1, 4)  # (B, nh, N, hs)
        if return_attn:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, nh, n, N)
            att = (att if mask is None else att.masked_fill(~mask, float("-inf"))).softmax(dim=-1)
            y = att @ v
        else:
            y, att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None  # (B, nh, n, hs)
        return y.transpose(1, 2).reshape(B, n, C), att  # (B, n, C)


class CrossAttentionBlock(nn.Module):
    def __init__(self, dim, heads, mlp_ratio=4.0, qkv_bias=True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)  # eps 1e-5: the official probe uses plain nn.LayerNorm
        self.xattn = CrossAttention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, q, x, mask=None, return_attn=False):
        y, att = self.xattn(q, self.norm1(x), mask, return_attn)
        q = q + y
        return q + self.mlp(self.norm2(q)), att


class AttentivePooler(nn.Module):
    def __init__(self, dim, depth=4, heads=16, mlp_ratio=4.0, init_std=0.02):
        super().__init__()
        self.query_tokens = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio, eps=1e-5) for _ in range(depth - 1)])
        self.cross_attention_block = CrossAttentionBlock(dim, heads, mlp_ratio)
        nn.init.trunc_normal_(self.query_tokens, std=init_std)
        _init_weights(self, self.blocks, init_std)
        with torch.no_grad():  # the reference rescales the cross block's fc2 with the last self-attention layer id
            self.cross_attention_block.mlp.fc2.weight.div_(math.sqrt(2.0 * max(1, len(self.blocks))))

    def forward(self, x, key_padding_mask=None, return_attn=False):
        """(B, 1, D) pooled query; with return_attn also the cross-attention weights (B, nh, 1, N)."""
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # (B, 1, 1, N) True=attend
        for blk in self.blocks:
            x = blk(x, mask=mask)
        q = self.query_tokens.expand(x.size(0), -1, -1)  # (B, 1, D)
        q, att = self.cross_attention_block(q, x, mask, return_attn)
        return (q, att) if return_attn else q


def sincos_3d(grid, dim):
    """Fixed 3D sin-cos position table (N, dim) for tokens in (t, h, w) order: a third of the channels (an even
    number) per axis, sin and cos of the coordinate at geometric frequencies (Vaswani 2017; MAE's 2D table, in 3D)."""
    d = 2 * (dim // 6)  # channels per axis; the last dim - 3 d stay zero
    freq = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d // 2))  # (d/2,)
    axes = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in grid], indexing="ij")
    parts = [a.reshape(-1, 1) * freq for a in axes]  # 3 x (N, d/2)
    table = torch.cat([torch.cat([p.sin(), p.cos()], 1) for p in parts], 1)  # (N, 3 d)
    return F.pad(table, (0, dim - 3 * d)).float()


class AttentiveProbe(nn.Module):
    """Frozen-feature head: forward(tokens (B,N,dim), key_padding_mask (B,N) True=ignore) -> (B, num_outputs).

    Multi-view (num_views > 0): tokens are num_views*num_clips slots of equal length, concatenated; slot l gets
    the factorised embedding view_embed[l // num_clips] + clip_embed[l % num_clips] on every token (EchoJEPA RVSP).
    """

    def __init__(self, dim, num_outputs, depth=4, heads=16, mlp_ratio=4.0, num_views=0, num_clips=1, pos_grid=None):
        super().__init__()
        self.num_views, self.num_clips = num_views, num_clips
        self.pooler = AttentivePooler(dim, depth, heads, mlp_ratio)
        self.linear = nn.Linear(dim, num_outputs)
        if pos_grid is not None:  # deviation, off by default: V-JEPA 2's probe sees no position (its blocks run
            # without RoPE); a fixed table (no parameters, not in the state dict) tells it where each token sits
            self.register_buffer("pos_embed", sincos_3d(pos_grid, dim), persistent=False)  # (N, dim)
        if num_views > 0:
            self.view_embed = nn.Embedding(num_views, dim)
            self.clip_embed = nn.Embedding(num_clips, dim)
            nn.init.trunc_normal_(self.view_embed.weight, std=0.02)
            nn.init.trunc_normal_(self.clip_embed.weight, std=0.02)

    def forward(self, tokens, key_padding_mask=None, return_attn=False):
        """(B, num_outputs); with return_attn also the cross-attention weights (B, nh, 1, N) over the tokens."""
        if self.num_views > 0:
            B, N, D = tokens.shape
            L = self.num_views * self.num_clips
            slot = torch.arange(L, device=tokens.device)
            emb = self.view_embed(slot // self.num_clips) + self.clip_embed(slot % self.num_clips)  # (L, D)
            tokens = (tokens.view(B, L, N // L, D) + emb[None, :, None, :].to(tokens.dtype)).view(B, N, D)
        if hasattr(self, "pos_embed"):  # the same table on every clip (and view) slot
            B, N, D = tokens.shape
            tokens = (tokens.view(B, -1, *self.pos_embed.shape) + self.pos_embed.to(tokens.dtype)).view(B, N, D)
        if return_attn:  # the explicit-attention path, also returning its weights (probe.py --attn_maps)
            q, att = self.pooler(tokens, key_padding_mask, return_attn=True)
            return self.linear(q.squeeze(1)), att
        return self.linear(self.pooler(tokens, key_padding_mask).squeeze(1))


# -----------------------------------------------------------------------------
# linear read-out (frozen evaluation): pooled tokens + closed-form ridge, AttentiveProbe's parameter-free twin.
# Its one home is here because pretrain.py (online read-out) and probe.py (--probe linear, --export_features) both
# import model.py already; nothing here trains the encoder.


def pool_tokens(z, grid):
    """Two poolings of frozen tokens z (B, N, D), N = T'*H'*W' in (t, h, w) order: 'mean', every token averaged
    (B, D); and 'grid', the tokens of each 2x2 spatial quadrant averaged per time step, summarised by mean and std
    over time (B, 8 D). The grid pooling keeps where and how much things move, where the ejection fraction lives."""
    T, H, W = grid
    rows, cols = (slice(0, (H + 1) // 2), slice(H // 2, H)), (slice(0, (W + 1) // 2), slice(W // 2, W))
    z = z.view(len(z), T, H, W, -1)  # (B, T', H', W', D)
    q = torch.stack([z[:, :, r, c].mean((2, 3)) for r in rows for c in cols], 2)  # (B, T', 4, D)
    sd = q.std(1, correction=int(T > 1))  # one time step (a 2-frame clip) has no spread: 0, not NaN
    return dict(mean=z.mean((1, 2, 3)), grid=torch.cat([q.mean(1), sd], -1).flatten(1))


def ridge(xtr, ytr, lams=tuple(10.0 ** k for k in range(-2, 6))):
    """Closed-form ridge regression on standardised features, its lambda chosen by the exact leave-one-out squared
    error (the hat-matrix shortcut: no refits; sklearn's RidgeCV / RidgeClassifierCV on one-hot targets do the
    same). xtr (n, d), ytr (n, k) -> (W (d, k), b (k,), the chosen lambda's LOO mean squared error); predictions
    are x @ W + b (the standardisation folded into W and b)."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-8
    a, ym = (xtr - mu) / sd, ytr.mean(0)
    U, S, Vt = torch.linalg.svd(a, full_matrices=False)  # (n, r), (r,), (r, d)
    Uy = U.T @ (ytr - ym)  # (r, k)

    def loo(lam):
        s = S ** 2 / (S ** 2 + lam)
        lev = (U ** 2 * s).sum(1) + 1 / len(a)  # hat-matrix diagonal, intercept included
        return ((((ytr - ym) - U @ (s[:, None] * Uy)) / (1 - lev)[:, None]) ** 2).mean().item()
    lam = min(lams, key=loo)
    coef = Vt.T @ ((S / (S ** 2 + lam))[:, None] * Uy)  # (d, k), on standardised features
    return coef / sd[:, None], ym - (mu / sd) @ coef, loo(lam)


def rankme(f):
    """RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values of the embedding matrix;
    a label-free collapse signal (1 = collapsed to a line, D = every direction used equally). Deviation: of the
    centred matrix, since the common mean of layer-normed tokens would otherwise take most of the spectrum."""
    s = torch.linalg.svdvals(f - f.mean(0))
    p = s / s.sum() + 1e-7
    return float(torch.exp(-(p * p.log()).sum()))


# -----------------------------------------------------------------------------
# helpers


def strip_prefixes(state_dict):
    """Official checkpoints wrap modules in DDP and MultiSeqWrapper: keys start with `module.backbone.`.
    Strip leading `module.`, `backbone.` and torch.compile's `_orig_mod.` so keys match our attribute names."""
    out = {}
    for k, v in state_dict.items():
        while k.startswith(("module.", "backbone.", "_orig_mod.")):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


@torch.no_grad()
def ema_update(target, online, m, fused=True):
    """target <- m * target + (1 - m) * online over all parameters. The fused path is one foreach lerp launch
    group (timm ModelEmaV3); the loop is the readable reference it is tested against."""
    tp, op = list(target.parameters()), list(online.parameters())
    if fused:
        torch._foreach_lerp_(tp, op, 1.0 - m)
    else:
        for t, o in zip(tp, op):
            t.mul_(m).add_(o, alpha=1.0 - m)


def load_strict(module, state_dict, what="state dict"):
    """load_state_dict(strict=True) with one readable error listing missing, unexpected and mis-shaped keys."""
    sd, own = strip_prefixes(state_dict), module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs ours {tuple(v.shape)}" for k, v in own.items()
              if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        def head(xs):
            return ", ".join(xs[:5]) + (f" (+{len(xs) - 5} more)" if len(xs) > 5 else "") if xs else "none"
        raise ValueError(f"{what} does not match the model: missing keys: {head(missing)}; "
                         f"unexpected keys: {head(unexpected)}; shape mismatches: {head(shapes)}")
    module.load_state_dict(sd, strict=True)
