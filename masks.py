"""
Multiblock spatiotemporal tube masks of V-JEPA 2 / EchoJEPA (../shared/SPEC.md section 3), sampled as data:
the DataLoader's collate function builds index tensors on CPU workers and the model only gathers.

Two generators per step, both with tubes that span every tubelet time step (temporal scale 1.0) and block
aspect ratio ~ U(0.75, 1.5):
    short-range: 8 blocks of spatial scale 0.15      long-range: 2 blocks of spatial scale 0.70
Context = tokens outside every block, target = tokens inside any block (disjoint by construction).

Deviation from the reference, for static shapes (torch.compile(dynamic=False), CUDA graphs): the reference
truncates every sample's index lists to the batch minimum, so lengths change every batch and late-in-time tokens
are dropped. We use fixed budgets K_ctx, K_tgt per generator, a constant fraction of N chosen to match the
reference's truncated means at per-GPU batch 128 (224px/16f: short 299 ctx / 673 tgt, long 80 / 1096), and take a
uniformly random subset of exactly that size from each sample's own context / target set (a sample whose sets
are too small is redrawn).

Reachability: every position can be a target of both generators and context of the short-range one; the
long-range blocks (>= 70 % of the frame each) always cover the centre, which is never long-range context, exactly
as with the reference rule.

Seeding: the block size (aspect ratio) is drawn once per batch from (seed, step, generator), like the reference's
step-seeded generator; block positions are drawn per sample from (seed, key, generator), where key is the
sample's global draw id (step * global_batch + rank * batch + i). So masks are a pure function of
(seed, step, rank, i): resuming is exact, and 1 process with batch 2B sees the same masks as 2 processes with B.

    python masks.py --preview   # PNG of a synthetic clip with both generators' context/target overlaid
"""
import math

import numpy as np
import torch

# name, blocks, spatial scale, context and target budgets as fractions of N (SPEC section 3)
GENERATORS = [
    dict(name="short", nblocks=8, scale=0.15, ctx_frac=0.191, tgt_frac=0.429),
    dict(name="long", nblocks=2, scale=0.70, ctx_frac=0.051, tgt_frac=0.699),
]
# Mask policies (pretrain.py --masks). 'official' is the above. 'small' (ours, for small grids): on the 8x7x7 CPU
# grid the long-range blocks leave 20 context tokens, many in the black corners outside the fan; two blocks of
# scale 0.35 cover 53 % of the frame on average (simulated, 4000 draws, 5th percentile 37 %), and its budgets keep
# the short-range generator's ratio of budget to mean set size (0.53 context, 0.67 target).
MASK_POLICIES = {
    "official": GENERATORS,
    "small": [GENERATORS[0], dict(name="long", nblocks=2, scale=0.35, ctx_frac=0.25, tgt_frac=0.355)],
}
ASPECT_RATIO = (0.75, 1.5)
MAX_SIZE_DRAWS = 20  # block-size redraws of a batch before we declare the geometry impossible


def budgets(grid, generators=GENERATORS):
    """[(K_ctx, K_tgt)] per generator for a token grid (T', H', W')."""
    N = grid[0] * grid[1] * grid[2]
    return [(max(1, round(g["ctx_frac"] * N)), max(1, round(g["tgt_frac"] * N))) for g in generators]


def block_size(grid, scale, rng):
    """Reference rule: keep = int(H'W' * scale), h = round(sqrt(keep * ar)), w = round(sqrt(keep / ar))."""
    _, H, W = grid
    ar = rng.uniform(*ASPECT_RATIO)
    keep = int(H * W * scale)
    return min(int(round(math.sqrt(keep * ar))), H), min(int(round(math.sqrt(keep / ar))), W)


def _sample_one(grid, nblocks, h, w, kc, kt, rng):
    """Context/target ids of one sample, or None if its sets are smaller than the budgets after a few tries."""
    T, H, W = grid
    tube = np.arange(T)[:, None] * (H * W)  # (T', 1) offsets: a tube covers every time step
    for _ in range(100):
        covered = np.zeros((H, W), dtype=bool)  # spatial footprint of the tubes
        for _ in range(nblocks):  # blocks may overlap, as in the reference
            top, left = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)  # last row/col reachable
            covered[top:top + h, left:left + w] = True
        c_idx = (tube + np.flatnonzero(~covered)[None]).ravel()  # context token ids, (t, h, w) order
        t_idx = (tube + np.flatnonzero(covered)[None]).ravel()  # target token ids
        if len(c_idx) >= kc and len(t_idx) >= kt:
            return np.sort(rng.choice(c_idx, kc, replace=False)), np.sort(rng.choice(t_idx, kt, replace=False))
    return None


def sample_masks(grid, keys, step, seed=0, generators=GENERATORS, pairs_per_gen=1):
    """(ctx, tgt) pairs of (B, K) long tensors, pairs_per_gen independent draws per generator (generator-major),
    for the samples with global ids `keys`. pairs_per_gen = 1 is the reference: one pair per generator."""
    out = []
    for gi, (g, (kc, kt)) in enumerate(zip(generators, budgets(grid, generators))):
        for r in range(pairs_per_gen):
            salt = [gi] if r == 0 else [gi, 100 + r]  # draw 0 keeps the reference seeding
            size_rng = np.random.default_rng([seed, step, *salt])
            for attempt in range(MAX_SIZE_DRAWS):
                # On small grids some block sizes cannot meet both budgets (e.g. two 3x2 blocks on 3x3 cover 6 or
                # 9 cells): then the whole batch draws a new block size, deterministically.
                h, w = block_size(grid, g["scale"], size_rng)
                pairs = [_sample_one(grid, g["nblocks"], h, w, kc, kt,
                                     np.random.default_rng([seed, key, *salt, attempt])) for key in keys]
                if all(p is not None for p in pairs):
                    break
            else:
                raise RuntimeError(f"masks: grid {grid} cannot fit the {g['name']} budgets ({kc} ctx, {kt} tgt); "
                                   f"use a larger --crop or more --frames")
            out.append((torch.from_numpy(np.stack([p[0] for p in pairs])),
                        torch.from_numpy(np.stack([p[1] for p in pairs]))))
    return out


def sample_tube_mask(grid, keys, seed=0, ratio=0.9):
    """MAE baseline (VideoMAE): hide a random `ratio` of spatial positions as tubes over all T'. [(ctx, tgt)]"""
    T, H, W = grid
    n_vis = max(1, round((1 - ratio) * H * W))
    tube = np.arange(T)[:, None] * (H * W)  # (T', 1)
    ctx, tgt = [], []
    for key in keys:
        perm = np.random.default_rng([seed, key, 7]).permutation(H * W)
        ctx.append(np.sort((tube + perm[None, :n_vis]).ravel()))
        tgt.append(np.sort((tube + perm[None, n_vis:]).ravel()))
    return [(torch.from_numpy(np.stack(ctx)), torch.from_numpy(np.stack(tgt)))]


class MaskCollator:
    """collate_fn: a list of (key, clip) -> (clips (B,3,T,H,W), [(ctx (B,Kc), tgt (B,Kt)) per generator])."""

    def __init__(self, grid, global_batch, seed=0, objective="jepa", policy="official", pairs_per_gen=1):
        self.grid, self.global_batch, self.seed, self.objective = grid, global_batch, seed, objective
        self.generators, self.pairs_per_gen = MASK_POLICIES[policy], pairs_per_gen

    def __call__(self, batch):
        keys = [k for k, _ in batch]
        clips = torch.stack([c for _, c in batch])
        if self.objective == "mae":
            return clips, sample_tube_mask(self.grid, keys, self.seed)
        step = keys[0] // self.global_batch
        return clips, sample_masks(self.grid, keys, step, self.seed, self.generators, self.pairs_per_gen)


# -----------------------------------------------------------------------------
# preview: what the predictor must fill in


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Mask preview: context (kept) and target (predicted) tokens.")
    parser.add_argument("--preview", action="store_true", help="write a PNG of both generators' masks on a clip")
    parser.add_argument("--out", type=str, default="mask_preview.png", help="output PNG path")
    parser.add_argument("--frames", type=int, default=16, help="clip frames")
    parser.add_argument("--crop", type=int, default=112, help="clip height/width in pixels")
    parser.add_argument("--seed", type=int, default=0, help="mask and clip seed")
    args = parser.parse_args()
    if not args.preview:
        parser.error("nothing to do: pass --preview")
    import data  # the synthetic generator and the PNG writer (PyAV)

    grid = (args.frames // 2, args.crop // 16, args.crop // 16)
    video, _ = data.synth_video(args.seed, 0, view="A4C", frames=args.frames, fps=8.0, size=args.crop)
    rows = []
    for (ctx, tgt), g in zip(sample_masks(grid, [0], 0, args.seed), GENERATORS):
        tiles = []
        for t in range(0, args.frames, max(1, args.frames // 4)):  # 4 frames per row
            img = np.repeat(video[t][..., None], 3, axis=-1).astype(np.float32)
            tok = np.zeros(grid[0] * grid[1] * grid[2], dtype=np.int8)
            tok[ctx[0].numpy()], tok[tgt[0].numpy()] = 1, 2  # 0 = dropped by the budget, 1 = context, 2 = target
            m = tok.reshape(grid)[t // 2].repeat(16, 0).repeat(16, 1)  # (H, W) token map at this frame
            img[m == 2] = 0.5 * img[m == 2] + 0.5 * np.array([230, 60, 40])  # red: targets to predict
            img[m == 1] = 0.7 * img[m == 1] + 0.3 * np.array([40, 200, 80])  # green: context the encoder sees
            tiles.append(np.pad(img, ((2, 2), (2, 2), (0, 0))))
        rows.append(np.concatenate(tiles, axis=1))
        print(f"{g['name']}: {ctx.shape[1]} context, {tgt.shape[1]} target tokens of {int(np.prod(grid))}; "
              f"tubelet 0 as text (C = context, T = target, . = dropped):")
        for line in tok.reshape(grid)[0]:  # the same token map in the terminal (and in the README)
            print("    " + " ".join(".CT"[v] for v in line))
    data.write_png(args.out, np.concatenate(rows, axis=0).clip(0, 255).astype(np.uint8))
    print(f"wrote {args.out} (rows: short-range, long-range; green = context, red = target, plain = dropped)")
