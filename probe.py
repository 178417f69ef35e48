"""
Frozen-encoder probing (SPEC section 7). Every clip goes through the frozen target encoder ONCE (tokens cached),
then a probe is fit on the cached tokens of the labelled subset and reported on the test split:
  --probe linear     closed-form ridge on pooled tokens (mean pool and a 2x2-quadrant grid pool; model.ridge, the
                     same code as pretrain.py's online read-out); lambda and pooling chosen by leave-one-out
  --probe attentive  the paper's attentive probe: a grid of lr x wd heads trained in parallel, best on val
  --probe auto       (default) linear below 100 % labels, attentive at 100 % (README, 'Probing': measured)

CPU quick start (2 cores, synthetic echo, after `python pretrain.py`):
    python probe.py --task view --label_frac 0.01 --seeds 0 1 2   # 1 % labels (60 videos), mean +- sd over seeds
    python probe.py --task view --label_frac 0.01 --random_init   # the same on a random-init encoder (baseline)
    python probe.py --task view --probe attentive                 # the attentive probe (add --probe_pos: 3D sin-cos)
    python probe.py --task lvef                                   # LVEF regression, MAE in EF points
    python probe.py --task rvsp                                   # multi-view RVSP regression (A4C/PSAX/PLAX)
    python probe.py --task view --export_features                 # pooled features + labels: features.npz / .csv
    python probe.py --task lvef --label_frac 1 --lrs 1e-4 5e-5 --probe_depth 4   # the EchoJEPA protocol (GPU)
Robustness (SPEC section 8) and pediatric transfer:
    python probe.py --task lvef --robustness                      # clean + depth attenuation / shadow x 3 levels
    python probe.py --task lvef --eval_domain pediatric           # adult-trained probe, zero-shot on pediatric
Official weights, real data, trained probes, pictures:
    python probe.py --task lvef --init vitl.pt --data /data/EchoNet-Dynamic --crop 224 --batch_size 32
    python probe.py --task lvef --ckpt_probe official_probe.pt --init vitl.pt --data /data/EchoNet-Dynamic --crop 224
    python probe.py --task lvef --data /data/EchoNet-Dynamic --eval_data /data/EchoNet-Pediatric/A4C --fold 0
    python probe.py --task view --probe attentive --attn_maps 8 --embed_map   # attention heat maps, PCA map
"""
import argparse
import copy
import csv
import hashlib
import inspect
import json
import math
import os
import re
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model import CONFIGS, AttentiveProbe, Encoder, load_strict, pool_tokens, ridge, strip_prefixes

# -----------------------------------------------------------------------------
# config: every default here is the CPU quick start; each line is also a --flag. Deviations from the EchoJEPA
# protocol for 2 cores (README, 'Probing'): 1 % labels, a 10x lr grid, a depth-1 attentive probe.


@dataclass
class Config:
    task: str = "view"                    # view (classification) | lvef (regression) | rvsp (multi-view regression)
    label_frac: float = 0.01              # fraction of train labels used: per class / EF bin, >= 2 each, seeded
    ckpt: str = "out/ckpt.pt"             # pretrain.py checkpoint whose target_encoder is probed
    init: str = ""                        # official V-JEPA 2 / EchoJEPA checkpoint to probe instead of --ckpt
    random_init: bool = False             # baseline: the same architecture with random (seeded) weights
    model: str = ""                       # encoder size ('' = from the checkpoint; vitq with --random_init)
    data: str = "synthetic"               # 'synthetic', a V-JEPA CSV ('{split}' is filled in) or a data folder
    eval_data: list = field(default_factory=list)  # external test sets (repeatable; their test split, no retraining)
    fold: int = -1                        # EchoNet-Pediatric fold: k = TEST, k+1 = VAL, the rest TRAIN (-1 = none)
    train_domain: str = "adult"           # synthetic domain of train and val: adult | pediatric
    eval_domain: str = ""                 # synthetic domain of test ('' = train_domain; pediatric = zero-shot)
    n_train: int = 6000                   # synthetic train items (videos; studies for rvsp): 1 % = 10 per view class
    n_val: int = 100                      # synthetic val items (choose the best head)
    n_test: int = 300                     # synthetic test items (x7 encodes with --robustness)
    data_seed: int = 0                    # seed of the synthetic patients of every split (fixed across --seeds)
    frames: int = 16                      # frames per clip (even: tubelets of 2)
    crop: int = 112                       # clip height = width (multiple of 16)
    fps: float = 8.0                      # target sampling rate of clip frames
    num_clips: int = 2                    # clips per video, their tokens concatenated (EchoJEPA: 2 segments)
    probe: str = "auto"                   # linear (ridge on pooled tokens) | attentive (paper) | auto: linear below 100 % labels
    probe_pos: bool = False               # attentive: add a fixed 3D sin-cos position to the tokens (official: off)
    probe_depth: int = 1                  # probe depth: depth-1 self-attention blocks + 1 cross-attention (paper: 4)
    probe_heads: int = 16                 # probe attention heads (the largest divisor of the width up to this)
    epochs: int = 20                      # probe training epochs
    batch_size: int = 4                   # videos per probe step and per encoder batch
    lrs: tuple = (1e-3, 5e-4)             # head grid learning rates (AdamW, cosine to 0); EchoJEPA: 1e-4 5e-5
    wds: tuple = (0.01, 0.1, 0.4)         # weight decays of the head grid (one head per lr x wd)
    view_dropout: float = 0.1             # rvsp: probability of hiding a view at train time (>= 1 view kept)
    ckpt_probe: str = ""                  # evaluate this probe.pt or official V-JEPA 2/EchoJEPA probe, no training
    attn_maps: int = 0                    # write the best head's cross-attention maps of the first N test videos
    embed_map: bool = False               # write a PCA map of the mean-pooled test embeddings, print a silhouette
    export_features: bool = False         # write pooled features of the labelled train items, val and test, then exit
    robustness: bool = False              # also evaluate on corrupted test sets (corrupt.py, SPEC section 8)
    corruptions: str = "da,gs"            # --robustness corruption kinds, comma-separated (corrupt.KINDS)
    levels: str = "low,med,high"          # --robustness severities, comma-separated (corrupt.LEVELS)
    dtype: str = "auto"                   # float32 | bfloat16 | auto (bf16 on CUDA if supported, else fp32)
    num_workers: int = 1                  # DataLoader processes decoding/rendering clips while the encoder runs
    cache_dir: str = ""                   # also keep encoded features here, keyed by encoder + data ('' = memory)
    seed: int = 0                         # seeds the label subset, probe init, batch order and random encoder
    seeds: list = field(default_factory=list)  # repeat the run for each seed (reusing encoded clips): mean +- sd
    out_dir: str = ""                     # run folder ('' = out/probe_<task>, + _random with --random_init)


# argparse built from the block above; the comment of each line becomes its --help ('%' escaped: argparse formats it)
HELP = {k: v.replace("%", "%%") for k, v in re.findall(r"^\s+(\w+): .*?#\s*(.*)$", inspect.getsource(Config), re.M)}
parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
for f in fields(Config):
    if f.type is bool:
        parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=f.default, help=HELP[f.name])
    elif f.type is list:  # --eval_data A B, or --eval_data A --eval_data B
        parser.add_argument(f"--{f.name}", nargs="+", action="extend", default=[], help=HELP[f.name],
                            type=int if f.name == "seeds" else None)
    elif f.type is tuple:
        parser.add_argument(f"--{f.name}", type=float, nargs="+", default=f.default, help=HELP[f.name])
    else:
        choices = {"task": ["view", "lvef", "rvsp"], "model": [""] + sorted(CONFIGS), "probe": ["auto", "linear", "attentive"],
                   "train_domain": ["adult", "pediatric"], "eval_domain": ["", "adult", "pediatric"]}.get(f.name)
        parser.add_argument(f"--{f.name}", type=f.type, default=f.default, help=HELP[f.name], choices=choices)
cfg = Config(**vars(parser.parse_args()))
cfg.eval_domain = cfg.eval_domain or cfg.train_domain
cfg.seed = cfg.seeds[0] if cfg.seeds else cfg.seed  # the first run's seed (encoder, labels)
cfg.out_dir = cfg.out_dir or os.path.join("out", f"probe_{cfg.task}" + ("_random" if cfg.random_init else ""))
if not 0 < cfg.label_frac <= 1:
    parser.error(f"--label_frac {cfg.label_frac} must be in (0, 1]")
if cfg.crop % 16 or cfg.frames % 2 or cfg.frames < 2:
    parser.error(f"--crop {cfg.crop} must be a multiple of 16 and --frames {cfg.frames} even")
if cfg.dtype not in ("auto", "float32", "bfloat16"):
    parser.error(f"--dtype {cfg.dtype}: choose float32, bfloat16 or auto")
if cfg.ckpt_probe and not os.path.isfile(cfg.ckpt_probe):
    parser.error(f"--ckpt_probe {cfg.ckpt_probe}: no such file")
if cfg.random_init and cfg.init:
    parser.error("--random_init and --init exclude each other")
if cfg.ckpt_probe and len(cfg.seeds) > 1:
    parser.error("--seeds repeats probe training; --ckpt_probe evaluates a trained probe (pass one --seed)")
for p in cfg.eval_data:
    if p != "synthetic" and not os.path.exists(p.replace("{split}", "test")):
        parser.error(f"--eval_data {p}: no such file or folder")
if cfg.attn_maps < 0:
    parser.error(f"--attn_maps {cfg.attn_maps} must be >= 0")
# the few-label default (README, 'Probing'): the linear probe read every encoder as well as or better than the
# attentive one at 1 % labels; at 100 % the paper's attentive probe. A trained probe file is always attentive.
probe_kind = "attentive" if cfg.ckpt_probe else cfg.probe if cfg.probe != "auto" else \
    "linear" if cfg.label_frac < 1 else "attentive"
if cfg.attn_maps and probe_kind == "linear":
    parser.error("--attn_maps draws an attentive probe's attention: add --probe attentive")
classification, multiview = cfg.task == "view", cfg.task == "rvsp"
if cfg.robustness:
    import corrupt
    kinds, levels = cfg.corruptions.split(","), cfg.levels.split(",")
    for k in kinds:
        if k not in corrupt.KINDS:
            parser.error(f"--corruptions: unknown corruption kind {k!r} (choose from {', '.join(corrupt.KINDS)})")
    for lv in levels:
        if lv not in corrupt.LEVELS:
            parser.error(f"--levels: unknown corruption level {lv!r} (choose from {', '.join(corrupt.LEVELS)})")


def fail(msg):
    """One clear line, no traceback wall."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


# -----------------------------------------------------------------------------
# system: device, dtype (no DDP: the probe trains on cached features, one process is enough)

device = "cuda" if torch.cuda.is_available() else "cpu"
if cfg.dtype == "auto":
    cfg.dtype = "bfloat16" if device == "cuda" and torch.cuda.is_bf16_supported() else "float32"
autocast = nullcontext() if cfg.dtype == "float32" else torch.autocast(device, dtype=torch.bfloat16)
torch.backends.cuda.matmul.allow_tf32 = True
os.makedirs(cfg.out_dir, exist_ok=True)

# -----------------------------------------------------------------------------
# data: fixed splits; only the train subset chosen by --label_frac is ever encoded

import data  # noqa: E402  (after the argument checks: bad flags fail fast, without the video stack)


def dataset(split, domain, src, frame_fn=None):
    """One probe split, or one clear error line (missing split, a task whose labels the data lacks, bad rows)."""
    try:
        return data.build_probe_dataset(src, cfg.task, split, cfg.frames, cfg.crop, cfg.fps, cfg.data_seed,
                                        num_clips=cfg.num_clips, domain=domain,
                                        fold=None if cfg.fold < 0 else cfg.fold, n_train=cfg.n_train,
                                        n_val=cfg.n_val, n_test=cfg.n_test, frame_fn=frame_fn)
    except (ValueError, FileNotFoundError) as e:
        fail(f"--task {cfg.task}, {split} split of {src}: {e}")


def label_subset(labels, frac, seed, classification, bins=5):
    """Train items used at this label fraction: per class (classification) or per quantile bin of the target
    (regression: every EF range stays represented) ceil(n * frac) items, at least 2 (or all of a smaller group),
    drawn without replacement by a seeded generator. frac = 1 keeps everything."""
    labels = np.asarray(labels)
    if frac >= 1:
        return np.arange(len(labels))
    if classification:
        groups = labels
    else:  # rank -> bin: equal-count bins, robust to any target scale
        groups = np.argsort(np.argsort(labels, kind="stable"), kind="stable") * bins // len(labels)
    rng = np.random.default_rng(seed)
    keep = []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        keep += rng.choice(members, min(len(members), max(2, math.ceil(len(members) * frac))), replace=False).tolist()
    return np.sort(np.array(keep))


# the splits are built before the encoder loads: bad data fails in one line without waiting for the weights
test_ds = dataset("test", cfg.eval_domain, cfg.data)
bases = [re.sub(r"\W+", "_", os.path.basename(os.path.normpath(p.replace("{split}", "test"))).rsplit(".", 1)[0])
         for p in cfg.eval_data]  # a set is named by its file or folder name, numbered if two names collide
ext = {f"eval{i + 1}_{b}" if bases.count(b) > 1 else f"eval_{b}": (p, dataset("test", cfg.eval_domain, p))
       for i, (b, p) in enumerate(zip(bases, cfg.eval_data))}


def check_fit(n, views):
    """Every evaluated set must fit the probe: view class ids among its n classes (else its label map is another),
    multi-view studies with its number of view slots (else the slots mean other views)."""
    for src, ds in [(cfg.data, test_ds), *ext.values()] + ([] if cfg.ckpt_probe else [(cfg.data, val_ds)]):
        if classification and max(ds.labels) >= n:
            fail(f"{src}: class id {max(ds.labels)}, but the probe has {n} classes (ids 0-{n - 1})")
        if multiview and len(ds.rows[0][0]) != views:
            fail(f"{src}: {len(ds.rows[0][0])} views per study, but the probe has {views} view slots")


if not cfg.ckpt_probe:
    train_ds, val_ds = dataset("train", cfg.train_domain, cfg.data), dataset("val", cfg.train_domain, cfg.data)
    check_fit(train_ds.num_classes, len(train_ds.rows[0][0]))


# -----------------------------------------------------------------------------
# frozen encoder: pretrain.py's target_encoder, an official one, or a random baseline


def load_encoder():
    """(frozen encoder, one-line description of its weights). Official files carry no config: the size is read
    off the weights (width, depth) unless --model says it; a --model that disagrees with a checkpoint fails."""
    if cfg.random_init:
        torch.manual_seed(cfg.seed)
        name = cfg.model or "vitq"
        return Encoder(copy.deepcopy(CONFIGS[name])), f"random init {CONFIGS[name].name} (seed {cfg.seed})"
    path = cfg.init or cfg.ckpt
    if not os.path.isfile(path):
        fail(f"no checkpoint at {path}" + ("" if cfg.init else ": run `python pretrain.py` first, or pass --ckpt "
                                            "PATH, --init PATH (official weights) or --random_init"))
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        fail(f"{path}: cannot read the checkpoint ({type(e).__name__}: {e})")
    if not isinstance(ck, dict) or "target_encoder" not in ck:
        fail(f"{path}: expected a dict with a 'target_encoder' entry (a pretrain.py or V-JEPA 2 / EchoJEPA file)")
    sd, ck_cfg = strip_prefixes(ck["target_encoder"]), ck.get("config") or {}
    name = ck_cfg.get("model")
    if name is None:  # official file: find the size by width and depth
        dim, depth = sd["norm.weight"].numel(), len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        name = cfg.model or next((n for n, c in CONFIGS.items() if (c.dim, c.depth) == (dim, depth)), None)
        if name is None:
            fail(f"{path}: no known encoder of width {dim} and depth {depth}; pass --model")
    if name not in CONFIGS:
        fail(f"{path}: unknown encoder {name!r} in its config")
    if cfg.model and CONFIGS[cfg.model].name != CONFIGS[name].name:
        fail(f"--model {cfg.model} does not match the checkpoint's encoder {CONFIGS[name].name} ({path})")
    mcfg = copy.deepcopy(CONFIGS[name])
    mcfg.rope = ck_cfg.get("rope", "reference")
    encoder = Encoder(mcfg)
    try:
        load_strict(encoder, sd, f"{path} target_encoder")
    except ValueError as e:
        fail(str(e))
    return encoder, f"{path} ({mcfg.name})"


encoder, encoder_source = load_encoder()
encoder = encoder.to(device).eval().requires_grad_(False)  # frozen: eval mode, no grads, ever

# -----------------------------------------------------------------------------
# features: the encoder runs once per clip; tokens are cached (memory, optionally disk) and reused by every head
# and epoch. float16 halves the cache; the probe computes in float32 (or the autocast dtype).


@torch.no_grad()
def encode_batch(encoder, clips, present=None):
    """Frozen tokens: clips (B, C, 3, T, H, W) -> (B, C*N, D), the C clips of a video concatenated. Multi-view
    clips (B, V, C, 3, T, H, W) with present (B, V) -> (B, V*C*N, D); missing views are never encoded, their
    slots stay zero and the probe's key-padding mask hides them."""
    if present is None:
        clips, present = clips[:, None], torch.ones(clips.shape[0], 1, dtype=torch.bool)
    B, V, C = clips.shape[:3]
    with autocast:
        z = encoder(clips[present].flatten(0, 1).to(device))  # (P*C, N, D), P present views in the batch
    z = z.float().view(-1, C * z.shape[1], z.shape[2])  # (P, C*N, D)
    out = z.new_zeros(B, V, *z.shape[1:])
    out[present.to(device)] = z
    return out.flatten(1, 2)  # (B, V*C*N, D)


feature_cache, encode_seconds = {}, [0.0]
weights_key = hashlib.sha1(b"".join(v.cpu().numpy().tobytes() for v in encoder.state_dict().values())).hexdigest()


def features(name, ds, indices, key_extra="", keep=True):
    """dict(feats (n, L, D) float16, present (n, V), label, study, video) of ds[indices], encoded once per
    (encoder weights, data, geometry, items): kept in memory (keep=True; so --seeds reuse them) and, with
    --cache_dir, on disk."""
    key = hashlib.sha1(repr((weights_key, cfg.task, cfg.frames, cfg.crop, cfg.fps, cfg.num_clips, cfg.data_seed,
                             ds.rows[:3], len(ds), list(indices), key_extra)).encode()).hexdigest()[:16]
    if key in feature_cache:
        return feature_cache[key]
    path = os.path.join(cfg.cache_dir, f"feats_{key}.pt") if cfg.cache_dir else ""
    if path and os.path.isfile(path):
        out = torch.load(path, weights_only=False)
        feature_cache.update({key: out} if keep else {})
        return out
    t0 = time.time()
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, list(indices)), batch_size=cfg.batch_size,
                                         num_workers=cfg.num_workers)
    out = dict(feats=[], present=[], label=[], study=[], video=[])
    with tqdm(total=len(indices), desc=f"encode {name}", unit="video", dynamic_ncols=True) as bar:
        for b in loader:
            out["feats"].append(encode_batch(encoder, b["clips"], b.get("present")).half().cpu())
            out["present"].append(b.get("present", torch.ones(len(b["label"]), 1, dtype=torch.bool)))
            out["label"].append(b["label"])
            out["study"] += list(b["study"])
            out["video"] += list(b["video"])
            bar.update(len(b["label"]))
    for k in ("feats", "present", "label"):
        out[k] = torch.cat(out[k])
    encode_seconds[0] += time.time() - t0
    if path:
        os.makedirs(cfg.cache_dir, exist_ok=True)
        torch.save(out, path + ".tmp")
        os.replace(path + ".tmp", path)
    feature_cache.update({key: out} if keep else {})
    return out


token_grid = (cfg.frames // encoder.cfg.tubelet_size, cfg.crop // encoder.cfg.patch_size,
              cfg.crop // encoder.cfg.patch_size)  # (T', H', W') of one clip's tokens


def pooled(f, batch=64):
    """model.pool_tokens of each clip's tokens, averaged over a video's clips, the views side by side (missing views
    stay zero): dict(mean (n, V*D), grid (n, V*8D)) float64, computed once per feature dict. What --probe linear fits
    and --export_features writes."""
    if "pooled" not in f:
        n, L, D = f["feats"].shape
        V = f["present"].shape[1]
        out = []
        for i in range(0, n, batch):
            z = f["feats"][i:i + batch].float().view(-1, L // (V * cfg.num_clips), D)  # (b*V*C, N, D)
            p = pool_tokens(z, token_grid)
            out.append({k: v.view(-1, V, cfg.num_clips, v.shape[-1]).mean(2).flatten(1).double() for k, v in p.items()})
        f["pooled"] = {k: torch.cat([o[k] for o in out]) for k in ("mean", "grid")}
    return f["pooled"]


def export_features():
    """--export_features: features.npz (mean, grid, label, split, video, study, present) and features.csv (one row
    per video) of the labelled train items (--label_frac, --seed), every val and every test item."""
    used = label_subset(train_ds.labels, cfg.label_frac, cfg.seed, classification)
    sets = [("train", features("train", train_ds, used)), ("val", features("val", val_ds, range(len(val_ds)))),
            ("test", features("test", test_ds, range(len(test_ds))))]
    cat = lambda key: np.concatenate([np.asarray(f[key]) for _, f in sets])  # noqa: E731
    split = np.concatenate([[name] * len(f["label"]) for name, f in sets])
    out = dict(mean=np.concatenate([pooled(f)["mean"].numpy() for _, f in sets]),
               grid=np.concatenate([pooled(f)["grid"].numpy() for _, f in sets]), label=cat("label"), split=split,
               video=cat("video"), study=cat("study"), present=cat("present"))
    np.savez(os.path.join(cfg.out_dir, "features.npz"), **out)
    with open(os.path.join(cfg.out_dir, "features.csv"), "w", newline="") as fh:
        csv.writer(fh).writerows([["row", "split", "video", "study", "label"]] + [
            [i, s, v, st, lab] for i, (s, v, st, lab) in enumerate(zip(split, out["video"], out["study"], out["label"]))])
    counts = ", ".join(f"{len(f['label'])} {name}" for name, f in sets)
    print(f"features of {encoder_source}: {len(split)} videos ({counts}) | "
          f"mean {out['mean'].shape[1]}-d, grid {out['grid'].shape[1]}-d | {cfg.out_dir}/features.npz, features.csv")


# -----------------------------------------------------------------------------
# probe heads: the lr x wd grid trained in parallel, one AdamW each, on the same batches of cached tokens


def key_padding(present, tokens):
    """(B, V) present views -> (B, V*tokens) key-padding mask on the device, True = ignore; None if nothing is
    missing (the unmasked SDPA path is faster)."""
    return None if present.all() else (~present).repeat_interleave(tokens // present.shape[1], dim=1).to(device)


def drop_views(present, p, gen):
    """View dropout (EchoJEPA RVSP): hide each present view with probability p, always keeping >= 1 of them."""
    keep = present & (torch.rand(present.shape, generator=gen) >= p)
    empty = ~keep.any(1)
    if empty.any():  # all hidden: bring back one present view at random
        score = torch.rand(present.shape, generator=gen).masked_fill(~present, -1.0)
        keep[empty] = F.one_hot(score[empty].argmax(1), present.shape[1]).bool()
    return keep


def loss_fn(out, y):
    """Cross-entropy for classes; SmoothL1 (beta 1) on z-scored targets for regression (SPEC section 7)."""
    return F.cross_entropy(out, y.long()) if classification else F.smooth_l1_loss(out[:, 0], y.float(), beta=1.0)


def train_heads(heads, grid, f, y):
    """Train every head on the same shuffled batches: AdamW (decay on weights, none on biases and norms),
    lr cosine from its grid value to 0 over all steps, no warmup."""
    opts = []
    for head, (lr, wd) in zip(heads, grid):
        ps = list(head.parameters())
        opts.append(torch.optim.AdamW([dict(params=[p for p in ps if p.ndim >= 2], weight_decay=wd),
                                       dict(params=[p for p in ps if p.ndim < 2], weight_decay=0.0)], lr=lr))
    n, gen = len(y), torch.Generator().manual_seed(cfg.seed)
    total, step = cfg.epochs * math.ceil(n / cfg.batch_size), 0
    bar = tqdm(range(cfg.epochs), desc="probe epochs", unit="epoch", dynamic_ncols=True)
    for epoch in bar:
        losses = torch.zeros(len(heads))
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            x, present = f["feats"][idx].to(device).float(), f["present"][idx]
            if multiview and cfg.view_dropout > 0:
                present = drop_views(present, cfg.view_dropout, gen)
            kpm = key_padding(present, x.shape[1])
            for h, (head, opt, (lr, _)) in enumerate(zip(heads, opts, grid)):
                for g in opt.param_groups:
                    g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
                with autocast:
                    out = head(x, kpm)
                loss = loss_fn(out.float(), y[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses[h] += loss.item() * len(idx) / n
            step += 1
        bar.set_postfix_str(f"train loss best head {losses.min():.3f}, worst {losses.max():.3f}")
    return losses  # of the last epoch, per head


@torch.no_grad()
def predict(heads, f, batch=32):
    """Outputs of every head, (H, n, num_outputs) float32 on the CPU."""
    outs = []
    for i in range(0, len(f["feats"]), batch):
        x, present = f["feats"][i:i + batch].to(device).float(), f["present"][i:i + batch]
        kpm = key_padding(present, x.shape[1])
        with autocast:
            outs.append(torch.stack([h(x, kpm).float() for h in heads]).cpu())
    return torch.cat(outs, 1)


# -----------------------------------------------------------------------------
# metrics: views per video; regression averaged per study (all clips/videos of a patient share its EF)


def zscore_stats(labels):
    """(mean, std) of regression targets, from the TRAIN labels; stored with the probe (probe.pt 'zscore')."""
    return float(np.mean(labels)), float(np.std(labels) + 1e-8)


def zscore(y, stats, inverse=False):
    """Standardise targets with train statistics (inverse=True maps predictions back to EF points / mmHg)."""
    return y * stats[1] + stats[0] if inverse else (y - stats[0]) / stats[1]


def evaluate(out, f, zstats):
    """(metrics dict, prediction rows). out (n, num_outputs) of one head."""
    labels = f["label"].numpy()
    if classification:
        pred, C = out.argmax(1).numpy(), out.shape[1]
        conf = np.zeros((C, C), np.int64)
        np.add.at(conf, (labels.astype(int), pred), 1)
        recall = [conf[c, c] / conf[c].sum() for c in range(C) if conf[c].sum()]
        m = dict(accuracy=float((pred == labels).mean()), balanced_accuracy=float(np.mean(recall)),
                 confusion=conf.tolist(), n=len(labels))
        return m, [(s, v, int(p), int(y)) for s, v, p, y in zip(f["study"], f["video"], pred, labels)]
    pred = zscore(out[:, 0].numpy().astype(np.float64), zstats, inverse=True)
    studies = sorted(set(f["study"]))
    where = {s: i for i, s in enumerate(studies)}
    g = np.array([where[s] for s in f["study"]])
    count = np.bincount(g, minlength=len(studies))
    p, y = np.bincount(g, pred) / count, np.bincount(g, labels) / count  # study means
    err = p - y
    ss = ((y - y.mean()) ** 2).sum()
    r2 = 1 - (err ** 2).sum() / ss if ss > 0 else float("nan")  # undefined for one study or equal labels
    pearson = float(np.corrcoef(p, y)[0, 1]) if len(y) > 1 and p.std() > 0 and y.std() > 0 else float("nan")
    m = dict(mae=float(np.abs(err).mean()), rmse=float(np.sqrt((err ** 2).mean())), r2=float(r2), pearson=pearson,
             n=len(studies))
    return m, [(s, v, float(q), float(t), float(p[where[s]])) for s, v, q, t in zip(f["study"], f["video"], pred, labels)]


def write_predictions(split, rows):
    with open(os.path.join(cfg.out_dir, f"{split}_predictions.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["study", "video", "prediction", "label"] + ([] if classification else ["study_prediction"]))
        w.writerows(rows)


def confusion_png(path, conf, cell=24):
    """Row-normalised confusion matrix as a grey PNG (rows true, columns predicted, in data.VIEWS order; dark =
    many), cells of `cell` pixels with light grid lines: a numpy raster, no plotting library."""
    frac = np.asarray(conf, np.float64) / np.maximum(np.asarray(conf).sum(1, keepdims=True), 1)
    img = np.kron(255 - np.round(frac * 255), np.ones((cell, cell))).astype(np.uint8)
    img[::cell, :], img[:, ::cell] = 200, 200
    data.write_png(path, np.pad(img, ((0, 1), (0, 1)), constant_values=200))


# -----------------------------------------------------------------------------
# pictures: numpy rasters written with PyAV (data.write_png / write_video), no plotting library

# the picture kit, no plotting library: a colour map, a palette and a 3x5 bitmap font
PALETTE = np.array([(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)], np.uint8)  # 10 distinct hues
FONT = dict(zip("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-.%", [  # glyph = 5 rows x 3 bits, top row in the high bits
    0x7b6f, 0x2c97, 0x73e7, 0x73cf, 0x5bc9, 0x79cf, 0x79ef, 0x7249, 0x7bef, 0x7bcf, 0x2bed, 0x6bae, 0x3923, 0x6b6e,
    0x79a7, 0x79a4, 0x396b, 0x5bed, 0x7497, 0x126a, 0x5bad, 0x4927, 0x5fed, 0x6b6d, 0x2b6a, 0x6ba4, 0x2b73, 0x6bad,
    0x388e, 0x7492, 0x5b6f, 0x5b6a, 0x5bfd, 0x5aad, 0x5a92, 0x72a7, 0x01c0, 0x0002, 0x52a5]))


def jet(x):
    """Colour map: values in [0, 1], any shape -> uint8 RGB (..., 3), dark blue -> cyan -> yellow -> dark red."""
    x = np.clip(np.asarray(x, np.float64), 0, 1)[..., None]
    return np.round(255 * np.clip(1.5 - np.abs(4 * x - np.array([3, 2, 1])), 0, 1)).astype(np.uint8)


def draw_text(img, y, x, text, color, scale=2):
    """Write text into an (H, W, 3) uint8 image in place, top-left corner (y, x): the 3x5 FONT (upper case; other
    characters are blank), each font pixel scale x scale, one font pixel between characters, clipped at the border."""
    for i, ch in enumerate(text.upper()):
        glyph = ((FONT.get(ch, 0) >> np.arange(14, -1, -1)) & 1).reshape(5, 3).astype(bool)
        glyph = glyph.repeat(scale, 0).repeat(scale, 1)  # (5*scale, 3*scale)
        box = img[y:y + 5 * scale, x + 4 * scale * i:x + 4 * scale * i + 3 * scale]
        box[glyph[:box.shape[0], :box.shape[1]]] = color


def scatter_png(path, xy, colours, legend, title="", notes=(), S=400, r=3):
    """Scatter plot PNG (S, S + 140, 3): points xy (n, 2) fitted into an S x S frame (y up), discs of radius r in
    colours (n, 3), painted in a seeded random order (no group always on top); a right column with the title, the
    legend [(colour, name)] and, at the bottom, the notes."""
    img = np.full((S, S + 140, 3), 255, np.uint8)
    img[[0, S - 1], :S], img[:, [0, S - 1]] = 160, 160  # frame
    p = (r + 2 + (xy - xy.min(0)) / np.maximum(np.ptp(xy, 0), 1e-12) * (S - 2 * r - 5) + 0.5).astype(int)  # (n, 2)
    dy, dx = np.nonzero(np.hypot(*np.mgrid[-r:r + 1, -r:r + 1]) <= r + 0.3)  # offsets of a disc, + r
    o = np.random.default_rng(0).permutation(len(p))
    img[S - 1 - r - p[o, 1, None] + dy, p[o, 0, None] + dx - r] = colours[o][:, None]  # (n, disc) pixels
    draw_text(img, 10, S + 10, title, (0, 0, 0))
    for k, (colour, name) in enumerate(legend):
        img[30 + 18 * k:40 + 18 * k, S + 10:S + 20] = colour
        draw_text(img, 30 + 18 * k, S + 26, name, (0, 0, 0))
    for k, note in enumerate(notes):
        draw_text(img, S - 18 * (len(notes) - k), S + 10, note, (0, 0, 0))
    data.write_png(path, img)



@torch.no_grad()
def attention_maps(head, f, ds, n):
    """attn_maps/<i>_<video>.mp4 of the first n test videos: the head's cross-attention (query -> tokens, mean of the
    heads) on the first clip (of the first present view), one map per tubelet (2 frames, 16 x 16 px), min-max scaled
    per clip, in jet colours blended 50/50 on the grey frames the encoder saw; .png: 4 frames, grey above heat."""
    pt, ps = encoder.cfg.tubelet_size, encoder.cfg.patch_size
    grid = (cfg.frames // pt, cfg.crop // ps, cfg.crop // ps)
    N, peaks = math.prod(grid), []  # tokens per clip; peak weight / uniform weight
    os.makedirs(os.path.join(cfg.out_dir, "attn_maps"), exist_ok=True)
    for i in range(min(n, len(ds))):
        x, present = f["feats"][i:i + 1].to(device).float(), f["present"][i:i + 1]
        with autocast:
            att = head(x, key_padding(present, x.shape[1]), return_attn=True)[1].float()  # (1, nh, 1, L)
        v = int(present[0].int().argmax())  # view v's clips start at token v * num_clips * N
        w = att[0, :, 0, v * cfg.num_clips * N:][:, :N].mean(0).view(grid).cpu().numpy()  # (T', H', W')
        peaks.append(w.max() * N / w.sum())
        clip = ds[i]["clips"][(v, 0) if multiview else 0][0].numpy()  # (T, crop, crop), ImageNet-normalised
        grey = np.clip((clip * data.IMAGENET_STD[0] + data.IMAGENET_MEAN[0]) * 255 + 0.5, 0, 255).astype(np.uint8)
        heat = ((w - w.min()) / max(w.max() - w.min(), 1e-12)).repeat(pt, 0).repeat(ps, 1).repeat(ps, 2)  # (T, H, W)
        rgb = (0.5 * grey[..., None] + 0.5 * jet(heat) + 0.5).astype(np.uint8)  # (T, crop, crop, 3)
        path = os.path.join(cfg.out_dir, "attn_maps", f"{i:03d}_" + re.sub(r"[^\w.-]+", "_", f["video"][i]))
        data.write_video(path + ".mp4", rgb, cfg.fps, codec="libx264")
        pick = np.linspace(0, len(rgb) - 1, min(4, len(rgb))).round().astype(int)
        data.write_png(path + ".png", np.concatenate([np.hstack(grey[pick, ..., None].repeat(3, -1)),
                                                      np.hstack(rgb[pick])]))
        if i == 0:  # the first video's middle tubelet as text, for terminals and the README
            ramp, mid = " .:-=+*#%@", heat[len(heat) // 2, ::ps, ::ps]  # (H', W') in [0, 1]
            print(f"attention of test video 0 ({f['video'][0]}), tubelet {grid[0] // 2}, min-max scaled ' ' to '@':")
            for row in mid:
                print("    |" + "".join(2 * ramp[min(int(v * len(ramp)), len(ramp) - 1)] for v in row) + "|")
    print(f"attention maps of {len(peaks)} test videos: {cfg.out_dir}/attn_maps (peak weight {np.mean(peaks):.1f}x "
          f"the clip's uniform weight, on average)")


def pca2(x):
    """PCA of the rows of x (n, D), SVD of the centred data: coordinates (n, 2), directions (D, 2), variance shares."""
    x = x - x.mean(0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    return x @ vh[:2].T, vh[:2].T, s[:2] ** 2 / (s ** 2).sum().clamp_min(1e-30)


def silhouette(x, labels):
    """Mean silhouette (Rousseeuw 1987) of the groups `labels` of the rows of x (n, D), Euclidean (sklearn's default):
    (b - a) / max(a, b) per point, a = mean distance to its own group, b = to the nearest other group; 0 for a point
    alone in its group; nan with < 2 groups. 1 = tight, separate groups, ~0 = mixed."""
    groups, labels = np.unique(labels, return_inverse=True)
    if len(groups) < 2:
        return float("nan")
    x = torch.as_tensor(x, dtype=torch.float64)
    d = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist").numpy()  # (n, n), exact zeros on the diagonal
    member = np.eye(len(groups), dtype=bool)[labels]  # (n, G)
    size = member.sum(0)[labels]  # size of each point's group
    mean_to = d @ member / member.sum(0)  # (n, G) mean distance to each group, its own counting the point itself
    a, b = mean_to[member] * size / np.maximum(size - 1, 1), np.where(member, np.inf, mean_to).min(1)
    return float(np.where(size > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-30), 0).mean())


def embed_map(f):
    """embed_map.png: PC1 x PC2 of the test videos' mean-pooled frozen tokens (present views only), coloured by view
    (--task view) or by label quintile (lvef and rvsp have no view to colour by: A4C clips, studies of all views),
    and the silhouette of those groups in the full embedding space."""
    keep = f["present"].repeat_interleave(f["feats"].shape[1] // f["present"].shape[1], dim=1)[..., None]  # (n, L, 1)
    x = (f["feats"].float() * keep).sum(1) / keep.sum(1)  # (n, D)
    y = f["label"].numpy()
    if classification:
        groups, colours = y.astype(int), PALETTE[np.arange(int(y.max()) + 1) % len(PALETTE)]
        names = {g: data.VIEWS[g] if g < len(data.VIEWS) else str(g) for g in np.unique(groups)}
    else:
        edges = np.quantile(y, np.linspace(0, 1, 6))
        groups, colours = np.clip(np.searchsorted(edges, y, side="right") - 1, 0, 4), jet(np.arange(0.1, 1, 0.2))
        names = {g: f"{edges[g]:.0f}-{edges[g + 1]:.0f}" for g in np.unique(groups)}
    z, _, ratio = pca2(x.double())
    sil, what = silhouette(x.numpy(), groups), "views" if classification else "label quintiles"
    scatter_png(os.path.join(cfg.out_dir, "embed_map.png"), z.numpy(), colours[groups],
                     [(colours[g], name) for g, name in names.items()], cfg.task,
                     [f"PC1 {100 * ratio[0]:.0f}%", f"PC2 {100 * ratio[1]:.0f}%", f"SIL {sil:.2f}"])
    cols, rows = 64, 20  # the same scatter as text: one character per cell, the group of its last point
    lo, hi = z.min(0).values, z.max(0).values
    c = ((z - lo) / (hi - lo).clamp_min(1e-12) * torch.tensor([cols - 1.0, rows - 1.0])).round().long()  # (n, 2)
    mark = {g: ({"PLAX": "L", "PSAX": "S"}.get(n) or n[1:2] or n) if classification else str(g) for g, n in names.items()}
    canvas = [[" "] * cols for _ in range(rows)]
    for (u, v), g in zip(c.tolist(), groups):
        canvas[rows - 1 - v][u] = mark[g]
    print("PC1 across, PC2 up; " + ", ".join(f"{mark[g]} = {n}" for g, n in names.items()))
    print("\n".join("    |" + "".join(r) + "|" for r in canvas))
    print(f"embedding map: {cfg.out_dir}/embed_map.png | PC1, PC2 explain {100 * ratio[0]:.1f} %, "
          f"{100 * ratio[1]:.1f} % | silhouette of the {what} (Euclidean, {x.shape[1]}-d) {sil:.3f}")
    return dict(silhouette=sil, groups=what, explained_variance=ratio.tolist())


# -----------------------------------------------------------------------------
# the run, once per seed: encode -> fit -> select -> evaluate -> report. A seed draws the label subsets, the probe
# init and batch order, and the random encoder; the splits (--data_seed) and, for a trained encoder, every encoded
# clip stay the same, so --seeds measures the spread of the probe, not of the data.


def load_probe():
    """--ckpt_probe: (the trained attentive head, its metadata) from probe.py's probe.pt or an official probe file."""
    try:
        pk = torch.load(cfg.ckpt_probe, map_location="cpu", weights_only=False)
        sd = strip_prefixes(pk["classifiers"][0])
        width = sd["pooler.query_tokens"].shape[-1]
    except Exception as e:
        fail(f"--ckpt_probe {cfg.ckpt_probe}: not a probe checkpoint (a 'classifiers' list of pooler.* / linear.* "
             f"state dicts; {type(e).__name__}: {e})")
    if width != dim:
        fail(f"--ckpt_probe {cfg.ckpt_probe} is a probe of width {width}, this encoder's width is {dim} "
             f"({encoder_source})")
    if "probe_args" in pk:  # ours (probe.py)
        args, meta = pk["probe_args"], dict(grid=[tuple(g) for g in pk["grid"]], zscore=pk["zscore"], val=pk["val"],
                                            n_train=pk.get("n_train"))
        if pk["config"]["task"] != cfg.task:
            fail(f"--ckpt_probe {cfg.ckpt_probe} is a {pk['config']['task']} probe, not --task {cfg.task}")
        if pk.get("encoder", encoder_source) != encoder_source:  # allowed (same width), but say so
            print(f"note: --ckpt_probe {cfg.ckpt_probe} was trained on the features of {pk['encoder']}, "
                  f"not of {encoder_source}")
    else:  # official (V-JEPA 2 evals, DDP 'module.' keys): sizes read off the weights, heads from --probe_heads
        args = dict(dim=dim, num_outputs=len(sd.get("linear.weight", [0])), heads=nh,
                    depth=1 + len({k.split(".")[2] for k in sd if k.startswith("pooler.blocks.")}),
                    num_views=len(sd.get("view_embed.weight", ())), num_clips=len(sd.get("clip_embed.weight", [0])))
        meta = dict(grid=[], zscore=None, val=None, n_train=None)
        if (args["num_outputs"] > 1) != classification or (args["num_views"] > 0) != multiview:
            fail(f"--ckpt_probe {cfg.ckpt_probe} has {args['num_outputs']} outputs and {args['num_views']} view slots: "
                 f"not a --task {cfg.task} probe")
        if len(pk["classifiers"]) > 1:
            print(f"--ckpt_probe {cfg.ckpt_probe}: {len(pk['classifiers'])} classifiers, evaluating the first")
        if not classification:  # no z-score statistics stored: the train split's labels (never encoded)
            meta["zscore"] = zscore_stats(dataset("train", cfg.train_domain, cfg.data).labels)
            print(f"official probe without z-score statistics: using the train labels of {cfg.data} "
                  f"(mean {meta['zscore'][0]:.3f}, std {meta['zscore'][1]:.3f})")
    check_fit(args["num_outputs"], args.get("num_views", 0))
    if multiview and args["num_clips"] != cfg.num_clips:  # else its slot embeddings would land on the wrong tokens
        fail(f"--ckpt_probe {cfg.ckpt_probe} has {args['num_clips']} clip slots per view, this run encodes "
             f"{cfg.num_clips}: pass --num_clips {args['num_clips']}")
    head = AttentiveProbe(**args).to(device)
    try:
        load_strict(head, sd, f"--ckpt_probe {cfg.ckpt_probe}")
    except ValueError as e:
        fail(str(e))
    return head, meta


def fit_linear(tr, y):
    """--probe linear: closed-form ridge (model.ridge) on each pooling of the labelled videos' tokens; the pooling
    and lambda with the smallest leave-one-out error win. Selection from the train labels alone: no val labels."""
    x = pooled(tr)
    t = F.one_hot(y.long(), train_ds.num_classes).double() if classification else y.double()[:, None]
    fits = {p: ridge(x[p], t) for p in x}
    pool = min(fits, key=lambda p: fits[p][2])
    return dict(pool=pool, W=fits[pool][0], b=fits[pool][1], loo={p: fit[2] for p, fit in fits.items()})


def fit_attentive(tr, y, va):
    """The lr x wd grid of attentive heads, trained in parallel, sorted best first on the val subset."""
    args = dict(dim=dim, num_outputs=train_ds.num_classes if classification else 1, depth=cfg.probe_depth, heads=nh,
                num_views=tr["present"].shape[1] if multiview else 0, num_clips=cfg.num_clips,
                pos_grid=token_grid if cfg.probe_pos else None)
    grid = [(lr, wd) for lr in cfg.lrs for wd in cfg.wds]
    torch.manual_seed(cfg.seed)
    heads = [AttentiveProbe(**args).to(device) for _ in grid]
    train_loss = train_heads(heads, grid, tr, y.to(device))
    outs = predict(heads, va)
    yv = va["label"] if classification else torch.from_numpy(zscore(va["label"].numpy(), zstats)).float()
    val = [dict(lr=lr, wd=wd, train_loss=float(tl), val_loss=float(loss_fn(o, yv)), **evaluate(o, va, zstats)[0])
           for (lr, wd), tl, o in zip(grid, train_loss, outs)]
    order = sorted(range(len(heads)), key=lambda h: (-val[h]["accuracy"], h) if classification else (val[h]["mae"], h))
    write_predictions("val", evaluate(outs[order[0]], va, zstats)[1])
    heads, grid, val = [heads[h] for h in order], [grid[h] for h in order], [val[h] for h in order]
    # classifiers: every head's state dict, best on val first (grid and val list the same order)
    torch.save(dict(classifiers=[h.state_dict() for h in heads], grid=grid, val=val, zscore=zstats,
                    probe_args={k: v for k, v in args.items() if k != "pos_grid" or v}, n_train=len(tr["label"]),
                    encoder=encoder_source, config=asdict(cfg)), os.path.join(cfg.out_dir, "probe.pt"))
    return heads[0].eval(), grid, val


def evaluate_all(predict_fn):
    """Test (kept for the pictures), every --eval_data set (evaluated once, not kept) and, with --robustness, the
    corrupted test sets: (results {name: metrics}, external {name: metrics}, test features)."""
    results, external, te = {}, {}, None
    for name, (src, ds) in {"test": (cfg.data, test_ds), **ext}.items():
        f = features(name, ds, range(len(ds)), keep=name == "test")
        te = f if name == "test" else te
        m, rows = evaluate(predict_fn(f), f, zstats)
        write_predictions(name, rows)
        if classification:
            confusion_png(os.path.join(cfg.out_dir, f"confusion_{name}.png"), m["confusion"])
        if name == "test":
            results["test"] = m
        else:
            external[name] = dict(data=src, **m)
    if cfg.robustness:  # same probe, test videos corrupted on the fly (one static map per video, SPEC section 8)
        for kind in kinds:
            for level in levels:
                fn = partial(corrupt.corrupt_video, kind=kind, level=level, seed=cfg.seed)
                ds = dataset("test", cfg.eval_domain, cfg.data, frame_fn=fn)
                f = features(f"test_{kind}_{level}", ds, range(len(ds)), key_extra=(kind, level), keep=False)
                results[f"{kind}_{level}"] = evaluate(predict_fn(f), f, zstats)[0]
    return results, external, te


def report(results, external, what, n_labels, val_metrics, best_hp):
    """metrics.json and one summary table; returns the summary."""
    key = "accuracy" if classification else "mae"
    clean = results["test"][key]
    for name, m in results.items():  # relative degradation: MAE increase / accuracy drop, % of clean
        if name != "test":
            m["degradation_pct"] = 100 * ((m[key] - clean) if not classification else (clean - m[key])) / max(clean, 1e-12)
    avg_deg = float(np.mean([m["degradation_pct"] for n, m in results.items() if n != "test"])) if cfg.robustness else None
    summary = dict(task=cfg.task, encoder=encoder_source, probe=what, label_frac=cfg.label_frac, labels=n_labels,
                   n_train=n_labels.get("train"), best=best_hp, val=val_metrics, test=results.pop("test"), external=external or None,
                   robustness=results or None, avg_degradation_pct=avg_deg, embed_map=embed_info,
                   train_domain=cfg.train_domain, eval_domain=cfg.eval_domain,
                   seconds=dict(encode=round(encode_seconds[0], 1), train=round(t_train, 1)), config=asdict(cfg))
    with open(os.path.join(cfg.out_dir, "metrics.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    unit = "" if classification else (" (EF points)" if cfg.task == "lvef" else " (mmHg)")
    seen = " + ".join(f"{v} {k}" for k, v in n_labels.items())
    print(f"\n{cfg.task} probe{unit} | {encoder_source} | {what}" + (f" | labels seen: {seen}" if seen else "")
          + f" | encode {encode_seconds[0]:.0f} s, train {t_train:.0f} s | {cfg.out_dir}")
    table = [(f"val ({cfg.train_domain}, best head)", val_metrics[0])] if val_metrics and "n" in val_metrics[0] else []
    table += [(f"test ({cfg.eval_domain}{', clean' if cfg.robustness else ''})", summary["test"])]
    table += [(f"  {n.split('_')[0].upper()} {n.split('_')[1]}", m) for n, m in results.items()]
    table += list(external.items())  # --eval_data sets: their paths are in metrics.json
    w = max(26, *(len(n) + 2 for n, _ in table))
    print(f"{'set':<{w}}{'n':>6}" + "".join(f"{c:>19}" for c in cols) + ("  degradation %" if cfg.robustness else ""))
    for name, m in table:
        print(f"{name:<{w}}{m['n']:>6}" + "".join(f"{m[c]:>19.4f}" for c in cols)
              + (f"{m['degradation_pct']:>15.1f}" if "degradation_pct" in m else ""))
    if cfg.robustness:
        print(f"average relative degradation over {len(results)} corrupted sets: {avg_deg:.1f} %")
    if n_labels.get("train", 50) < 50:  # measured: 12 labels, one encoder, seeds 0-2 gave test accuracy 0.24 / 0.37 / 0.34
        print(f"note: {n_labels['train']} labelled train items: results move by several points with --seed alone "
              "(README, 'Measured'); compare encoders over a few seeds")
    if not classification and summary["test"]["r2"] <= 0:  # a constant predictor is perfectly 'robust': say so
        print("note: test R2 <= 0, the probe predicts about the train mean; more labels (--label_frac) or epochs "
              "are needed before these numbers say anything about the encoder")
    return summary


dim = encoder.cfg.dim
nh = max(h for h in range(1, cfg.probe_heads + 1) if dim % h == 0)  # 16 for every official width
cols = ["accuracy", "balanced_accuracy"] if classification else ["mae", "rmse", "r2", "pearson"]
if cfg.export_features:
    export_features()
    sys.exit(0)
seeds, base_dir, runs = cfg.seeds or [cfg.seed], cfg.out_dir, []
for i_seed, seed in enumerate(seeds):
    cfg.seed, encode_seconds[0], t_train = seed, 0.0, 0.0
    if len(seeds) > 1:
        cfg.out_dir = os.path.join(base_dir, f"seed{seed}")
        os.makedirs(cfg.out_dir, exist_ok=True)
        print(f"\n--- seed {seed} ({i_seed + 1} of {len(seeds)}): {cfg.out_dir}")
    if cfg.random_init and i_seed > 0:  # a new random encoder per seed; its clips are encoded anew
        encoder, encoder_source = load_encoder()
        encoder = encoder.to(device).eval().requires_grad_(False)
        weights_key = hashlib.sha1(b"".join(v.cpu().numpy().tobytes() for v in encoder.state_dict().values())).hexdigest()
    if cfg.ckpt_probe:  # evaluate a trained probe: no train/val features needed
        best, meta = load_probe()
        zstats, val_metrics, n_labels = meta["zscore"], meta["val"], {"train": meta["n_train"]} if meta["n_train"] else {}
        best_hp = dict(lr=meta["grid"][0][0], wd=meta["grid"][0][1]) if meta["grid"] else None
        what = f"best head lr {meta['grid'][0][0]:g} wd {meta['grid'][0][1]:g}" if meta["grid"] else \
            f"official probe {cfg.ckpt_probe}"
        predict_fn = lambda f: predict([best], f)[0]  # noqa: E731
    else:  # encode the labelled subset, fit, select
        used = label_subset(train_ds.labels, cfg.label_frac, cfg.seed, classification)
        with open(os.path.join(cfg.out_dir, "train_subset.csv"), "w", newline="") as fh:
            csv.writer(fh).writerows([["index", "video", "label"]] + [[i, train_ds.rows[i][3], train_ds.labels[i]]
                                                                      for i in used])
        tr = features("train", train_ds, used)
        zstats = None if classification else zscore_stats(tr["label"].numpy())
        y = tr["label"] if classification else torch.from_numpy(zscore(tr["label"].numpy(), zstats)).float()
        n_labels, t0 = {"train": len(used)}, time.time()
        print(f"probe {cfg.task} | encoder {encoder_source} | {probe_kind} | {len(used)}/{len(train_ds)} train items "
              f"(label_frac {cfg.label_frac}) | tokens/item {tr['feats'].shape[1]} x {dim}")
        if probe_kind == "linear":
            lin = fit_linear(tr, y)
            val_metrics, best_hp = [dict(pool=lin["pool"], loo_mse=lin["loo"])], dict(pool=lin["pool"])
            what = f"linear probe (ridge on {lin['pool']}-pooled tokens, LOO MSE " + \
                ", ".join(f"{p} {v:.4f}" for p, v in lin["loo"].items()) + ")"
            predict_fn = lambda f: (pooled(f)[lin["pool"]] @ lin["W"] + lin["b"]).float()  # noqa: E731
        else:  # val labels drawn at the same fraction as the train labels (of a train-sized pool): honest at 1 %
            val_used = label_subset(val_ds.labels, min(1.0, cfg.label_frac * len(train_ds) / len(val_ds)),
                                    cfg.seed + 1, classification)
            n_labels["val"] = len(val_used)
            print(f"{len(cfg.lrs) * len(cfg.wds)} heads x {cfg.epochs} epochs | probe depth {cfg.probe_depth}, {nh} "
                  f"heads | best head chosen on {len(val_used)}/{len(val_ds)} val items")
            best, grid, val_metrics = fit_attentive(tr, y, features("val", val_ds, val_used))
            best_hp = dict(lr=grid[0][0], wd=grid[0][1])
            what = f"attentive probe, best head lr {grid[0][0]:g} wd {grid[0][1]:g}"
            predict_fn = lambda f: predict([best], f)[0]  # noqa: E731
        t_train = time.time() - t0
    results, external, te = evaluate_all(predict_fn)
    if cfg.attn_maps:
        attention_maps(best, te, test_ds, cfg.attn_maps)
    embed_info = embed_map(te) if cfg.embed_map else None
    runs.append(report(results, external, what, n_labels, val_metrics, best_hp))

# -----------------------------------------------------------------------------
# over seeds: mean +- sd (sample sd) and every seed's value, in metrics_seeds.json

if len(seeds) > 1:
    agg = {c: [r["test"][c] for r in runs] for c in cols}
    if cfg.robustness:
        agg["avg_degradation_pct"] = [r["avg_degradation_pct"] for r in runs]
    agg = {c: dict(mean=float(np.mean(v)), sd=float(np.std(v, ddof=1)), values=v) for c, v in agg.items()}
    with open(os.path.join(base_dir, "metrics_seeds.json"), "w") as fh:
        json.dump(dict(task=cfg.task, encoder=runs[0]["encoder"], probe=probe_kind, seeds=seeds, test=agg,
                       runs=[os.path.join(base_dir, f"seed{s}") for s in seeds]), fh, indent=1)
    print(f"\n{cfg.task} {probe_kind} probe over {len(seeds)} seeds | " + (
        "random init, a new encoder per seed" if cfg.random_init else runs[0]["encoder"]) + f" | {base_dir}/metrics_seeds.json")
    for c, m in agg.items():
        print(f"test {c:<20} {m['mean']:.4f} +- {m['sd']:.4f}   (" +
              ", ".join(f"seed {s}: {v:.4f}" for s, v in zip(seeds, m["values"])) + ")")
