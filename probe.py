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
    probe: str = "auto"                   # linear (pooled ridge) | attentive (paper) | auto: linear below 100 % labels
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
CHOICES = dict(task=["view", "lvef", "rvsp"], model=[""] + sorted(CONFIGS), probe=["auto", "linear", "attentive"],
               train_domain=["adult", "pediatric"], eval_domain=["", "adult", "pediatric"])
parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
for f in fields(Config):  # argparse options by field type; a list flag repeats: --eval_data A B --eval_data C
    opts = {bool: dict(action=argparse.BooleanOptionalAction), tuple: dict(type=float, nargs="+"),
            list: dict(nargs="+", action="extend", default=[], type=int if f.name == "seeds" else None)}
    opts = opts.get(f.type, dict(type=f.type, choices=CHOICES.get(f.name)))
    parser.add_argument(f"--{f.name}", **{"default": f.default, "help": HELP[f.name], **opts})
cfg = Config(**vars(parser.parse_args()))
cfg.eval_domain = cfg.eval_domain or cfg.train_domain
cfg.seed = cfg.seeds[0] if cfg.seeds else cfg.seed  # the first run's seed (encoder, labels)
cfg.out_dir = cfg.out_dir or os.path.join("out", f"probe_{cfg.task}" + ("_random" if cfg.random_init else ""))
classification, multiview = cfg.task == "view", cfg.task == "rvsp"
# the few-label default (README, 'Probing'): the linear probe read every encoder as well as or better than the
# attentive one at 1 % labels; at 100 % the paper's attentive probe. A trained probe file is always attentive.
probe_kind = "attentive" if cfg.ckpt_probe else cfg.probe if cfg.probe != "auto" else \
    "linear" if cfg.label_frac < 1 else "attentive"
missing = [p for p in cfg.eval_data if p != "synthetic" and not os.path.exists(p.replace("{split}", "test"))]
for bad, msg in [  # the flag checks, in order: the first that fails is one line, before anything slow
        (not 0 < cfg.label_frac <= 1, f"--label_frac {cfg.label_frac} must be in (0, 1]"),
        (cfg.crop % 16 or cfg.frames % 2 or cfg.frames < 2,
         f"--crop {cfg.crop} must be a multiple of 16 and --frames {cfg.frames} even"),
        (cfg.dtype not in ("auto", "float32", "bfloat16"), f"--dtype {cfg.dtype}: choose float32, bfloat16 or auto"),
        (cfg.ckpt_probe and not os.path.isfile(cfg.ckpt_probe), f"--ckpt_probe {cfg.ckpt_probe}: no such file"),
        (cfg.random_init and cfg.init, "--random_init and --init exclude each other"),
        (cfg.ckpt_probe and len(cfg.seeds) > 1,
         "--seeds repeats probe training; --ckpt_probe evaluates a trained probe (pass one --seed)"),
        (missing, f"--eval_data {(missing or [''])[0]}: no such file or folder"),
        (cfg.attn_maps < 0, f"--attn_maps {cfg.attn_maps} must be >= 0"),
        (cfg.attn_maps and probe_kind == "linear",
         "--attn_maps draws an attentive probe's attention: add --probe attentive")]:
    if bad:
        parser.error(msg)
if cfg.robustness:
    import corrupt
    kinds, levels = cfg.corruptions.split(","), cfg.levels.split(",")
    for flag, name, given, known in [("corruptions", "kind", kinds, corrupt.KINDS),
                                     ("levels", "level", levels, corrupt.LEVELS)]:
        for v in given:
            if v not in known:
                parser.error(f"--{flag}: unknown corruption {name} {v!r} (choose from {', '.join(known)})")

# -----------------------------------------------------------------------------
# setup: device, dtype (no DDP: the probe trains on cached features, one process is enough); data: fixed splits,
# only the train subset chosen by --label_frac is ever encoded

device = "cuda" if torch.cuda.is_available() else "cpu"
if cfg.dtype == "auto":
    cfg.dtype = "bfloat16" if device == "cuda" and torch.cuda.is_bf16_supported() else "float32"
autocast = nullcontext() if cfg.dtype == "float32" else torch.autocast(device, dtype=torch.bfloat16)
torch.backends.cuda.matmul.allow_tf32 = True
os.makedirs(cfg.out_dir, exist_ok=True)
import data  # noqa: E402  (after the argument checks: bad flags fail fast, without the video stack)


def fail(msg):  # one clear line, no traceback wall
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def dataset(split, domain, src, frame_fn=None):
    """One probe split, or one clear error line (missing split, a task whose labels the data lacks, bad rows)."""
    try:
        return data.build_probe_dataset(src, cfg.task, split, cfg.frames, cfg.crop, cfg.fps, cfg.data_seed,
                                        num_clips=cfg.num_clips, domain=domain, fold=None if cfg.fold < 0 else cfg.fold,
                                        n_train=cfg.n_train, n_val=cfg.n_val, n_test=cfg.n_test, frame_fn=frame_fn)
    except (ValueError, FileNotFoundError) as e:
        fail(f"--task {cfg.task}, {split} split of {src}: {e}")


def label_subset(labels, frac, seed, classification, bins=5):
    """The items labelled at this fraction: ceil(n * frac) per class or per equal-count bin of a regression target
    (every EF range stays represented), at least 2 (or all of a smaller group), drawn by a seeded generator."""
    labels = np.asarray(labels)
    if frac >= 1:
        return np.arange(len(labels))
    ranks = np.argsort(np.argsort(labels, kind="stable"), kind="stable")
    groups = labels if classification else ranks * bins // len(labels)
    rng, members = np.random.default_rng(seed), [np.flatnonzero(groups == g) for g in np.unique(groups)]
    return np.sort(np.concatenate([rng.choice(m, min(len(m), max(2, math.ceil(len(m) * frac))), replace=False)
                                   for m in members]))


def write_csv(name, header, rows):
    with open(os.path.join(cfg.out_dir, name), "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])


def check_fit(n, views):
    """Every evaluated set must fit the probe: class ids below its n classes (else the label map is another), as many
    views per study as its view slots (else the slots mean other views)."""
    for src, ds in [(cfg.data, test_ds), *ext.values()] + ([] if cfg.ckpt_probe else [(cfg.data, val_ds)]):
        if classification and max(ds.labels) >= n:
            fail(f"{src}: class id {max(ds.labels)}, but the probe has {n} classes (ids 0-{n - 1})")
        if multiview and len(ds.rows[0][0]) != views:
            fail(f"{src}: {len(ds.rows[0][0])} views per study, but the probe has {views} view slots")


# the splits are built before the encoder loads: bad data fails in one line without waiting for the weights
test_ds = dataset("test", cfg.eval_domain, cfg.data)
bases = [re.sub(r"\W+", "_", os.path.basename(os.path.normpath(p.replace("{split}", "test"))).rsplit(".", 1)[0])
         for p in cfg.eval_data]  # a set is named by its file or folder name, numbered if two names collide
ext = {f"eval{i + 1}_{b}" if bases.count(b) > 1 else f"eval_{b}": (p, dataset("test", cfg.eval_domain, p))
       for i, (b, p) in enumerate(zip(bases, cfg.eval_data))}
if not cfg.ckpt_probe:
    train_ds, val_ds = dataset("train", cfg.train_domain, cfg.data), dataset("val", cfg.train_domain, cfg.data)
    check_fit(train_ds.num_classes, len(train_ds.rows[0][0]))

# -----------------------------------------------------------------------------
# the frozen encoder (pretrain.py's target_encoder, an official one, or a random baseline) runs once per clip; its
# tokens are cached (in memory, with --cache_dir also on disk) as float16 and reused by every seed, head and epoch


def load_encoder():
    """(frozen encoder on the device, one line naming its weights). Official files carry no config: the size is
    read off the weights unless --model names it; a --model that disagrees with a checkpoint fails."""
    if cfg.random_init:
        torch.manual_seed(cfg.seed)
        mcfg = copy.deepcopy(CONFIGS[cfg.model or "vitq"])
        encoder, source = Encoder(mcfg), f"random init {mcfg.name} (seed {cfg.seed})"
    else:
        path = cfg.init or cfg.ckpt
        if not os.path.isfile(path):
            fail(f"no checkpoint at {path}" + ("" if cfg.init else ": run `python pretrain.py` first, or pass "
                                                "--ckpt PATH, --init PATH (official weights) or --random_init"))
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
        encoder, source = Encoder(mcfg), f"{path} ({mcfg.name})"
        try:
            load_strict(encoder, sd, f"{path} target_encoder")
        except ValueError as e:
            fail(str(e))
    return encoder.to(device).eval().requires_grad_(False), source  # frozen: eval mode, no grads, ever


def weights_hash(module):  # in every feature cache key: cached features are reused for the very same weights only
    return hashlib.sha1(b"".join(v.cpu().numpy().tobytes() for v in module.state_dict().values())).hexdigest()


encoder, encoder_source = load_encoder()
weights_key, dim, feature_cache, timing = weights_hash(encoder), encoder.cfg.dim, {}, dict(encode=0.0, train=0.0)
nh = max(h for h in range(1, cfg.probe_heads + 1) if dim % h == 0)  # probe heads: 16 for every official width
pt, ps = encoder.cfg.tubelet_size, encoder.cfg.patch_size
token_grid = (cfg.frames // pt, cfg.crop // ps, cfg.crop // ps)  # (T', H', W') of one clip's tokens


@torch.no_grad()
def encode_batch(encoder, clips, present=None):
    """Frozen tokens: clips (B, C, 3, T, H, W) -> (B, C*N, D), a video's C clips side by side. Multi-view clips
    (B, V, C, 3, T, H, W) with present (B, V) -> (B, V*C*N, D): missing views are never encoded, they stay zero."""
    if present is None:
        clips, present = clips[:, None], torch.ones(clips.shape[0], 1, dtype=torch.bool)
    B, V, C = clips.shape[:3]
    with autocast:
        z = encoder(clips[present].flatten(0, 1).to(device))  # (P*C, N, D), P present views in the batch
    z = z.float().view(-1, C * z.shape[1], z.shape[2])  # (P, C*N, D)
    out = z.new_zeros(B, V, *z.shape[1:])
    out[present.to(device)] = z
    return out.flatten(1, 2)  # (B, V*C*N, D)


def features(name, ds, indices, key_extra="", keep=True):
    """dict(feats (n, L, D) float16, present (n, V), label, study, video) of ds[indices], encoded once per (weights,
    data, geometry, items); keep=True keeps them in memory (for --seeds), --cache_dir on disk."""
    key = hashlib.sha1(repr((weights_key, cfg.task, cfg.frames, cfg.crop, cfg.fps, cfg.num_clips, cfg.data_seed,
                             ds.rows[:3], len(ds), list(indices), key_extra)).encode()).hexdigest()[:16]
    path = os.path.join(cfg.cache_dir, f"feats_{key}.pt") if cfg.cache_dir else ""
    if key in feature_cache:
        return feature_cache[key]
    if path and os.path.isfile(path):
        out = torch.load(path, weights_only=False)
    else:
        t0, batches = time.time(), []
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, list(indices)), batch_size=cfg.batch_size,
                                             num_workers=cfg.num_workers)
        with tqdm(total=len(indices), desc=f"encode {name}", unit="video", dynamic_ncols=True) as bar:
            for b in loader:
                b["feats"] = encode_batch(encoder, b.pop("clips"), b.get("present")).half().cpu()
                batches.append(dict(b, present=b.get("present", torch.ones(len(b["label"]), 1, dtype=torch.bool))))
                bar.update(len(b["label"]))
        out = {k: torch.cat([b[k] for b in batches]) for k in ("feats", "present", "label")}
        out.update({k: [s for b in batches for s in b[k]] for k in ("study", "video")})
        timing["encode"] += time.time() - t0
        if path:
            os.makedirs(cfg.cache_dir, exist_ok=True)
            torch.save(out, path + ".tmp")
            os.replace(path + ".tmp", path)
    if keep:
        feature_cache[key] = out
    return out


def pooled(f, batch=64):
    """model.pool_tokens per clip, averaged over a video's clips, its views side by side (missing ones zero): what
    --probe linear fits, dict(mean (n, V*D), grid (n, V*8D)) float64, computed once per feature dict."""
    if "pooled" not in f:
        (n, L, D), V, out = f["feats"].shape, f["present"].shape[1], []
        for i in range(0, n, batch):
            z = f["feats"][i:i + batch].float().view(-1, L // (V * cfg.num_clips), D)  # (b*V*C, N, D)
            p = pool_tokens(z, token_grid)
            out.append({k: v.view(-1, V, cfg.num_clips, v.shape[-1]).mean(2).flatten(1).double() for k, v in p.items()})
        f["pooled"] = {k: torch.cat([o[k] for o in out]) for k in ("mean", "grid")}
    return f["pooled"]


# -----------------------------------------------------------------------------
# probe heads: the lr x wd grid trained in parallel, one AdamW each, on the same batches of cached tokens; metrics
# per video for views, per study for regression (all clips/videos of a patient share its EF)


def key_padding(present, tokens):  # (B, V) -> (B, V*tokens) on the device, True = ignore; None: the faster SDPA path
    return None if present.all() else (~present).repeat_interleave(tokens // present.shape[1], dim=1).to(device)


def drop_views(present, p, gen):
    """View dropout (EchoJEPA RVSP): hide each present view with probability p, always keeping >= 1 of them."""
    keep = present & (torch.rand(present.shape, generator=gen) >= p)
    empty = ~keep.any(1)
    if empty.any():  # all hidden: bring back one present view at random
        score = torch.rand(present.shape, generator=gen).masked_fill(~present, -1.0)
        keep[empty] = F.one_hot(score[empty].argmax(1), present.shape[1]).bool()
    return keep


def loss_fn(out, y):  # cross-entropy for classes, SmoothL1 (beta 1) on z-scored regression targets (SPEC section 7)
    return F.cross_entropy(out, y.long()) if classification else F.smooth_l1_loss(out[:, 0], y.float(), beta=1.0)


def train_heads(heads, grid, f, y):
    """Every head on the same shuffled batches, AdamW (decay on weights, none on biases and norms), lr cosine from
    its grid value to 0, no warmup: the mean train loss of each head in the last epoch."""
    opts = [torch.optim.AdamW([dict(params=[p for p in h.parameters() if p.ndim >= 2], weight_decay=wd),
                               dict(params=[p for p in h.parameters() if p.ndim < 2], weight_decay=0.0)], lr=lr)
            for h, (lr, wd) in zip(heads, grid)]
    n, gen, step = len(y), torch.Generator().manual_seed(cfg.seed), 0
    total = cfg.epochs * math.ceil(n / cfg.batch_size)
    bar = tqdm(range(cfg.epochs), desc="probe epochs", unit="epoch", dynamic_ncols=True)
    for epoch in bar:
        losses, order = torch.zeros(len(heads)), torch.randperm(n, generator=gen)
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
    return losses


@torch.no_grad()
def predict(heads, f, batch=32):  # (H, n, num_outputs) float32 on the CPU
    outs = []
    for i in range(0, len(f["feats"]), batch):
        x, present = f["feats"][i:i + batch].to(device).float(), f["present"][i:i + batch]
        kpm = key_padding(present, x.shape[1])
        with autocast:
            outs.append(torch.stack([h(x, kpm).float() for h in heads]).cpu())
    return torch.cat(outs, 1)


def zscore_stats(labels):  # (mean, std) of the TRAIN regression targets, stored with the probe (probe.pt 'zscore')
    return float(np.mean(labels)), float(np.std(labels) + 1e-8)


def zscore(y, stats, inverse=False):  # inverse=True maps predictions back to EF points / mmHg
    return y * stats[1] + stats[0] if inverse else (y - stats[0]) / stats[1]


def targets(f):  # what a probe is trained on: class ids, or labels z-scored with this run's train statistics
    return f["label"] if classification else torch.from_numpy(zscore(f["label"].numpy(), zstats)).float()


def evaluate(out, f):
    """(metrics, prediction rows) of one head's outputs out (n, num_outputs)."""
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
    studies, g = np.unique(f["study"], return_inverse=True)  # g: each video's study
    count = np.bincount(g)
    p, y = np.bincount(g, pred) / count, np.bincount(g, labels) / count  # study means
    err, ss = p - y, ((y - y.mean()) ** 2).sum()
    r2 = 1 - (err ** 2).sum() / ss if ss > 0 else float("nan")  # undefined for one study or equal labels
    pearson = float(np.corrcoef(p, y)[0, 1]) if len(y) > 1 and p.std() > 0 and y.std() > 0 else float("nan")
    m = dict(mae=float(np.abs(err).mean()), rmse=float(np.sqrt((err ** 2).mean())), r2=float(r2), pearson=pearson,
             mae_meanpred=float(np.abs(y - zstats[0]).mean()), n=len(studies))  # the baseline: predict the train mean
    rows = zip(f["study"], f["video"], pred, labels, p[g])
    return m, [(s, v, float(q), float(t), float(q_study)) for s, v, q, t, q_study in rows]


cols = ["accuracy", "balanced_accuracy"] if classification else ["mae", "rmse", "r2", "pearson", "mae_meanpred"]
pred_header = ["study", "video", "prediction", "label"] + ([] if classification else ["study_prediction"])

# -----------------------------------------------------------------------------
# pictures: numpy rasters written with PyAV (data.write_png / write_video), no plotting library; a colour map, 10
# distinct hues and a 3x5 bitmap font (a glyph is 5 rows x 3 bits, the top row in the high bits)

PALETTE = np.array([(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)], np.uint8)
FONT = dict(zip("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-.%", [
    0x7b6f, 0x2c97, 0x73e7, 0x73cf, 0x5bc9, 0x79cf, 0x79ef, 0x7249, 0x7bef, 0x7bcf, 0x2bed, 0x6bae, 0x3923, 0x6b6e,
    0x79a7, 0x79a4, 0x396b, 0x5bed, 0x7497, 0x126a, 0x5bad, 0x4927, 0x5fed, 0x6b6d, 0x2b6a, 0x6ba4, 0x2b73, 0x6bad,
    0x388e, 0x7492, 0x5b6f, 0x5b6a, 0x5bfd, 0x5aad, 0x5a92, 0x72a7, 0x01c0, 0x0002, 0x52a5]))


def jet(x):  # values in [0, 1], any shape -> uint8 RGB (..., 3): dark blue -> cyan -> yellow -> dark red
    x = np.clip(np.asarray(x, np.float64), 0, 1)[..., None]
    return np.round(255 * np.clip(1.5 - np.abs(4 * x - np.array([3, 2, 1])), 0, 1)).astype(np.uint8)


def draw_text(img, y, x, text, scale=2):
    """Black FONT text (upper case, other characters blank) into an (H, W, 3) image from its top-left corner (y, x),
    a font pixel scale x scale, one between characters, clipped at the border."""
    for i, ch in enumerate(text.upper()):
        glyph = ((FONT.get(ch, 0) >> np.arange(14, -1, -1)) & 1).reshape(5, 3).repeat(scale, 0).repeat(scale, 1)
        box = img[y:y + 5 * scale, x + 4 * scale * i:x + 4 * scale * i + 3 * scale]  # (5*scale, 3*scale, 3)
        box[glyph[:box.shape[0], :box.shape[1]].astype(bool)] = 0


def confusion_png(path, conf, cell=24):
    """The row-normalised confusion matrix in grey (rows true, columns predicted, data.VIEWS order; dark = many),
    cells of `cell` pixels with light grid lines."""
    frac = np.asarray(conf, np.float64) / np.maximum(np.asarray(conf).sum(1, keepdims=True), 1)
    img = np.kron(255 - np.round(frac * 255), np.ones((cell, cell))).astype(np.uint8)
    img[::cell, :], img[:, ::cell] = 200, 200
    data.write_png(path, np.pad(img, ((0, 1), (0, 1)), constant_values=200))


@torch.no_grad()
def attention_maps(head, f, ds, n):
    """attn_maps/<i>_<video>.mp4 of the first n test videos: the head's cross-attention (mean of its heads) on the
    first clip of the first present view, min-max scaled, in jet colours blended 50/50 on the grey frames the encoder
    saw; .png: 4 frames, grey above heat."""
    N, peaks = math.prod(token_grid), []  # tokens per clip; peak weight / uniform weight
    os.makedirs(os.path.join(cfg.out_dir, "attn_maps"), exist_ok=True)
    for i in range(min(n, len(ds))):
        x, present = f["feats"][i:i + 1].to(device).float(), f["present"][i:i + 1]
        with autocast:
            att = head(x, key_padding(present, x.shape[1]), return_attn=True)[1].float()  # (1, nh, 1, L)
        v = int(present[0].int().argmax())  # view v's clips start at token v * num_clips * N
        w = att[0, :, 0, v * cfg.num_clips * N:][:, :N].mean(0).view(token_grid).cpu().numpy()  # (T', H', W')
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
        if i == 0:  # the middle tubelet as text: a ramp character (twice) per token
            ramp = " .:-=+*#%@"
            print(f"attention of test video 0 ({f['video'][0]}), tubelet {token_grid[0] // 2}, "
                  "min-max scaled ' ' to '@':")
            for row in heat[len(heat) // 2, ::ps, ::ps]:  # (H', W') in [0, 1]
                print("    |" + "".join(2 * ramp[min(int(v * len(ramp)), len(ramp) - 1)] for v in row) + "|")
    print(f"attention maps of {len(peaks)} test videos: {cfg.out_dir}/attn_maps (peak weight {np.mean(peaks):.1f}x "
          f"the clip's uniform weight, on average)")


def pca2(x):  # PCA of the rows of x (n, D) by SVD: coordinates (n, 2), directions (D, 2), variance shares
    x = x - x.mean(0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    return x @ vh[:2].T, vh[:2].T, s[:2] ** 2 / (s ** 2).sum().clamp_min(1e-30)


def silhouette(x, labels):
    """Mean silhouette (Rousseeuw 1987, Euclidean as sklearn) of the groups `labels` of the rows of x (n, D): (b - a)
    / max(a, b), a = mean distance to its own group, b = to the nearest other; 0 alone in a group, nan for 1 group."""
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


def embed_map(f, S=400, r=3):
    """embed_map.png and the same as text: PC1 x PC2 of the test videos' mean-pooled tokens (present views only) by
    view, or by label quintile (lvef, rvsp: no view to colour by), and the silhouette of those groups in full D."""
    keep = f["present"].repeat_interleave(f["feats"].shape[1] // f["present"].shape[1], dim=1)[..., None]  # (n, L, 1)
    x, y = (f["feats"].float() * keep).sum(1) / keep.sum(1), f["label"].numpy()  # (n, D), (n,)
    if classification:
        groups, colours = y.astype(int), PALETTE[np.arange(int(y.max()) + 1) % len(PALETTE)]
        names = {g: data.VIEWS[g] if g < len(data.VIEWS) else str(g) for g in np.unique(groups)}
        mark = {g: {"PLAX": "L", "PSAX": "S"}.get(n) or n[1:2] or n for g, n in names.items()}  # A4C -> 4
    else:
        edges = np.quantile(y, np.linspace(0, 1, 6))
        groups, colours = np.clip(np.searchsorted(edges, y, side="right") - 1, 0, 4), jet(np.arange(0.1, 1, 0.2))
        names = {g: f"{edges[g]:.0f}-{edges[g + 1]:.0f}" for g in np.unique(groups)}
        mark = {g: str(g) for g in names}
    z, _, ratio = pca2(x.double())
    sil, what = silhouette(x.numpy(), groups), "views" if classification else "label quintiles"
    # the picture (S, S + 140, 3): discs of radius r in an S x S frame (y up), painted in a seeded random order (no
    # group always on top); a right column with the title, the legend and, at the bottom, the numbers
    img, xy = np.full((S, S + 140, 3), 255, np.uint8), z.numpy()
    img[[0, S - 1], :S], img[:, [0, S - 1]] = 160, 160  # frame
    p = (r + 2 + (xy - xy.min(0)) / np.maximum(np.ptp(xy, 0), 1e-12) * (S - 2 * r - 5) + 0.5).astype(int)  # (n, 2)
    dy, dx = np.nonzero(np.hypot(*np.mgrid[-r:r + 1, -r:r + 1]) <= r + 0.3)  # offsets of a disc, + r
    o = np.random.default_rng(0).permutation(len(p))
    img[S - 1 - r - p[o, 1, None] + dy, p[o, 0, None] + dx - r] = colours[groups][o][:, None]  # (n, disc) pixels
    draw_text(img, 10, S + 10, cfg.task)
    for k, (g, name) in enumerate(names.items()):
        img[30 + 18 * k:40 + 18 * k, S + 10:S + 20] = colours[g]
        draw_text(img, 30 + 18 * k, S + 26, name)
    for k, note in enumerate([f"PC1 {100 * ratio[0]:.0f}%", f"PC2 {100 * ratio[1]:.0f}%", f"SIL {sil:.2f}"]):
        draw_text(img, S - 18 * (3 - k), S + 10, note)
    data.write_png(os.path.join(cfg.out_dir, "embed_map.png"), img)
    W, H = 64, 20  # the text scatter: one character per cell, the group of its last point
    lo, hi = z.min(0).values, z.max(0).values
    c = ((z - lo) / (hi - lo).clamp_min(1e-12) * torch.tensor([W - 1.0, H - 1.0])).round().long()  # (n, 2)
    canvas = [[" "] * W for _ in range(H)]
    for (u, v), g in zip(c.tolist(), groups):
        canvas[H - 1 - v][u] = mark[g]
    print("PC1 across, PC2 up; " + ", ".join(f"{mark[g]} = {n}" for g, n in names.items()))
    print("\n".join("    |" + "".join(row) + "|" for row in canvas))
    print(f"embedding map: {cfg.out_dir}/embed_map.png | PC1, PC2 explain {100 * ratio[0]:.1f} %, "
          f"{100 * ratio[1]:.1f} % | silhouette of the {what} (Euclidean, {x.shape[1]}-d) {sil:.3f}")
    return dict(silhouette=sil, groups=what, explained_variance=ratio.tolist())


# -----------------------------------------------------------------------------
# the run, once per seed: encode -> fit -> select -> evaluate -> report. A seed draws the label subsets, the probe
# init and batch order, and the random encoder; the splits (--data_seed) stay, so --seeds measures the spread of the
# probe. A probe: dict(predict (features -> outputs), head, what (one line), best (hyper-parameters), val, labels).


def load_probe():
    """--ckpt_probe: (probe, z-score statistics) of probe.py's probe.pt (its best head) or of an official probe."""
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
        args, (lr, wd), stats = pk["probe_args"], pk["grid"][0], pk["zscore"]
        probe = dict(what=f"best head lr {lr:g} wd {wd:g}", best=dict(lr=lr, wd=wd), val=pk["val"],
                     labels={"train": pk["n_train"]} if pk.get("n_train") else {})
        if pk["config"]["task"] != cfg.task:
            fail(f"--ckpt_probe {cfg.ckpt_probe} is a {pk['config']['task']} probe, not --task {cfg.task}")
        if pk.get("encoder", encoder_source) != encoder_source:  # allowed (same width), but say so
            print(f"note: --ckpt_probe {cfg.ckpt_probe} was trained on the features of {pk['encoder']}, "
                  f"not of {encoder_source}")
    else:  # official (V-JEPA 2 evals, DDP 'module.' keys): sizes read off the weights, heads from --probe_heads
        args = dict(dim=dim, num_outputs=len(sd.get("linear.weight", [0])), heads=nh,
                    depth=1 + len({k.split(".")[2] for k in sd if k.startswith("pooler.blocks.")}),
                    num_views=len(sd.get("view_embed.weight", ())), num_clips=len(sd.get("clip_embed.weight", [0])))
        probe, stats = dict(what=f"official probe {cfg.ckpt_probe}", best=None, val=None, labels={}), None
        if (args["num_outputs"] > 1) != classification or (args["num_views"] > 0) != multiview:
            fail(f"--ckpt_probe {cfg.ckpt_probe} has {args['num_outputs']} outputs and {args['num_views']} view "
                 f"slots: not a --task {cfg.task} probe")
        if len(pk["classifiers"]) > 1:
            print(f"--ckpt_probe {cfg.ckpt_probe}: {len(pk['classifiers'])} classifiers, evaluating the first")
        if not classification:  # no z-score statistics stored: the train split's labels (never encoded)
            stats = zscore_stats(dataset("train", cfg.train_domain, cfg.data).labels)
            print(f"official probe without z-score statistics: using the train labels of {cfg.data} "
                  f"(mean {stats[0]:.3f}, std {stats[1]:.3f})")
    check_fit(args["num_outputs"], args.get("num_views", 0))
    if multiview and args["num_clips"] != cfg.num_clips:  # else its slot embeddings would land on the wrong tokens
        fail(f"--ckpt_probe {cfg.ckpt_probe} has {args['num_clips']} clip slots per view, this run encodes "
             f"{cfg.num_clips}: pass --num_clips {args['num_clips']}")
    head = AttentiveProbe(**args).to(device)
    try:
        load_strict(head, sd, f"--ckpt_probe {cfg.ckpt_probe}")
    except ValueError as e:
        fail(str(e))
    return dict(probe, head=head, predict=lambda f: predict([head], f)[0]), stats


def fit_linear(tr):
    """Closed-form ridge (model.ridge) on each pooling of the train tokens; the pooling and lambda with the smallest
    leave-one-out error are selected, from the train labels alone."""
    x, y = pooled(tr), targets(tr)
    t = F.one_hot(y.long(), train_ds.num_classes).double() if classification else y.double()[:, None]
    fits = {p: ridge(x[p], t) for p in x}  # pooling -> (W, b, LOO mean squared error)
    pool, loo = min(fits, key=lambda p: fits[p][2]), {p: fit[2] for p, fit in fits.items()}
    W, b = fits[pool][:2]
    return dict(what=f"linear probe (ridge on {pool}-pooled tokens, LOO MSE "
                + ", ".join(f"{p} {v:.4f}" for p, v in loo.items()) + ")", best=dict(pool=pool),
                val=[dict(pool=pool, loo_mse=loo)], labels={"train": len(y)}, head=None,
                predict=lambda f: (pooled(f)[pool] @ W + b).float())


def fit_attentive(tr):
    """The lr x wd grid of attentive heads; the best on a val subset, labelled at the train fraction of a train-sized
    pool (honest at 1 %), is selected and its predictions written; probe.pt keeps every head, best first."""
    val_used = label_subset(val_ds.labels, min(1.0, cfg.label_frac * len(train_ds) / len(val_ds)), cfg.seed + 1,
                            classification)
    print(f"{len(cfg.lrs) * len(cfg.wds)} heads x {cfg.epochs} epochs | probe depth {cfg.probe_depth}, {nh} "
          f"heads | best head chosen on {len(val_used)}/{len(val_ds)} val items")
    va = features("val", val_ds, val_used)
    args = dict(dim=dim, num_outputs=train_ds.num_classes if classification else 1, depth=cfg.probe_depth, heads=nh,
                num_views=tr["present"].shape[1] if multiview else 0, num_clips=cfg.num_clips,
                pos_grid=token_grid if cfg.probe_pos else None)
    grid = [(lr, wd) for lr in cfg.lrs for wd in cfg.wds]
    torch.manual_seed(cfg.seed)
    heads = [AttentiveProbe(**args).to(device) for _ in grid]
    train_loss = train_heads(heads, grid, tr, targets(tr).to(device))
    outs, yv = predict(heads, va), targets(va)
    val = [dict(lr=lr, wd=wd, train_loss=float(tl), val_loss=float(loss_fn(o, yv)), **evaluate(o, va)[0])
           for (lr, wd), tl, o in zip(grid, train_loss, outs)]
    order = sorted(range(len(heads)), key=lambda h: (-val[h]["accuracy"], h) if classification else (val[h]["mae"], h))
    write_csv("val_predictions.csv", pred_header, evaluate(outs[order[0]], va)[1])
    heads, grid, val = [heads[h] for h in order], [grid[h] for h in order], [val[h] for h in order]
    torch.save(dict(classifiers=[h.state_dict() for h in heads], grid=grid, val=val, zscore=zstats,
                    probe_args={k: v for k, v in args.items() if k != "pos_grid" or v}, n_train=len(tr["label"]),
                    encoder=encoder_source, config=asdict(cfg)), os.path.join(cfg.out_dir, "probe.pt"))
    head, (lr, wd) = heads[0].eval(), grid[0]
    return dict(what=f"attentive probe, best head lr {lr:g} wd {wd:g}", best=dict(lr=lr, wd=wd), val=val,
                labels={"train": len(tr["label"]), "val": len(val_used)}, head=head,
                predict=lambda f: predict([head], f)[0])


def evaluate_all(predict_fn):
    """(results {name: metrics} of test and the --robustness sets, external {name: metrics} of the --eval_data sets,
    the test features, kept for the pictures)."""
    results, external = {}, {}
    for name, (src, ds) in {"test": (cfg.data, test_ds), **ext}.items():
        f = features(name, ds, range(len(ds)), keep=name == "test")
        m, rows = evaluate(predict_fn(f), f)
        write_csv(f"{name}_predictions.csv", pred_header, rows)
        if classification:
            confusion_png(os.path.join(cfg.out_dir, f"confusion_{name}.png"), m["confusion"])
        if name == "test":
            results["test"], te = m, f
        else:
            external[name] = dict(data=src, **m)
    for kind, level in [(k, lv) for k in kinds for lv in levels] if cfg.robustness else []:
        # the same probe on the test videos corrupted on the fly (one static map per video, SPEC section 8)
        fn = partial(corrupt.corrupt_video, kind=kind, level=level, seed=cfg.seed)
        ds = dataset("test", cfg.eval_domain, cfg.data, frame_fn=fn)
        f = features(f"test_{kind}_{level}", ds, range(len(ds)), key_extra=(kind, level), keep=False)
        results[f"{kind}_{level}"] = evaluate(predict_fn(f), f)[0]
    return results, external, te


def report(results, external, probe, embed_info):
    """metrics.json and one summary table; returns the summary."""
    test, val, n_labels = results.pop("test"), probe["val"], probe["labels"]
    key = "accuracy" if classification else "mae"
    clean = test[key]
    for m in results.values():  # the corrupted sets: MAE increase / accuracy drop, % of clean
        m["degradation_pct"] = 100 * ((m[key] - clean) if not classification else (clean - m[key])) / max(clean, 1e-12)
    avg_deg = float(np.mean([m["degradation_pct"] for m in results.values()])) if cfg.robustness else None
    summary = dict(task=cfg.task, encoder=encoder_source, probe=probe["what"], label_frac=cfg.label_frac,
                   labels=n_labels, n_train=n_labels.get("train"), best=probe["best"], val=val, test=test,
                   external=external or None, robustness=results or None, avg_degradation_pct=avg_deg,
                   embed_map=embed_info, train_domain=cfg.train_domain, eval_domain=cfg.eval_domain,
                   seconds={k: round(v, 1) for k, v in timing.items()}, config=asdict(cfg))
    with open(os.path.join(cfg.out_dir, "metrics.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    unit = "" if classification else (" (EF points)" if cfg.task == "lvef" else " (mmHg)")
    seen = " + ".join(f"{v} {k}" for k, v in n_labels.items())
    print(f"\n{cfg.task} probe{unit} | {encoder_source} | {probe['what']}" + (f" | labels seen: {seen}" if seen else "")
          + f" | encode {timing['encode']:.0f} s, train {timing['train']:.0f} s | {cfg.out_dir}")
    table = [(f"val ({cfg.train_domain}, best head)", val[0])] if val and "n" in val[0] else []
    table += [(f"test ({cfg.eval_domain}{', clean' if cfg.robustness else ''})", test)]
    table += [(f"  {n.split('_')[0].upper()} {n.split('_')[1]}", m) for n, m in results.items()]
    table += list(external.items())  # --eval_data sets: their paths are in metrics.json
    w = max(26, *(len(n) + 2 for n, _ in table))
    print(f"{'set':<{w}}{'n':>6}" + "".join(f"{c:>19}" for c in cols) + ("  degradation %" if cfg.robustness else ""))
    for name, m in table:
        print(f"{name:<{w}}{m['n']:>6}" + "".join(f"{m.get(c, math.nan):>19.4f}" for c in cols)
              + (f"{m['degradation_pct']:>15.1f}" if "degradation_pct" in m else ""))
    if cfg.robustness:
        print(f"average relative degradation over {len(results)} corrupted sets: {avg_deg:.1f} %")
    if n_labels.get("train", 50) < 50:  # measured: 12 labels, seeds 0-2 gave test accuracy 0.24 / 0.37 / 0.34
        print(f"note: {n_labels['train']} labelled train items: results move by several points with --seed alone "
              "(README, 'Probing'); compare encoders over a few seeds")
    if not classification and test["r2"] <= 0:  # a constant predictor is perfectly 'robust': say so
        print("note: test R2 <= 0, the probe predicts about the train mean; more labels (--label_frac) or epochs "
              "are needed before these numbers say anything about the encoder")
    return summary


if cfg.export_features:  # pooled features of the labelled train items and of every val and test item, then exit
    used = label_subset(train_ds.labels, cfg.label_frac, cfg.seed, classification)
    sets = dict(train=features("train", train_ds, used), val=features("val", val_ds, range(len(val_ds))),
                test=features("test", test_ds, range(len(test_ds))))
    for name, f in sets.items():
        f.update(pooled(f), split=[name] * len(f["label"]))
    out = {k: np.concatenate([np.asarray(f[k]) for f in sets.values()])
           for k in ("mean", "grid", "label", "split", "video", "study", "present")}
    np.savez(os.path.join(cfg.out_dir, "features.npz"), **out)
    write_csv("features.csv", ["row", "split", "video", "study", "label"],
              [[i, *row] for i, row in enumerate(zip(out["split"], out["video"], out["study"], out["label"]))])
    print(f"features of {encoder_source}: {len(out['split'])} videos ("
          + ", ".join(f"{len(f['label'])} {name}" for name, f in sets.items()) + f") | mean {out['mean'].shape[1]}-d, "
          f"grid {out['grid'].shape[1]}-d | {cfg.out_dir}/features.npz, features.csv")
    sys.exit(0)

seeds, base_dir, runs = cfg.seeds or [cfg.seed], cfg.out_dir, []
for i_seed, seed in enumerate(seeds):
    cfg.seed, timing = seed, dict(encode=0.0, train=0.0)
    if len(seeds) > 1:
        cfg.out_dir = os.path.join(base_dir, f"seed{seed}")
        os.makedirs(cfg.out_dir, exist_ok=True)
        print(f"\n--- seed {seed} ({i_seed + 1} of {len(seeds)}): {cfg.out_dir}")
    if cfg.random_init and i_seed > 0:  # a new random encoder per seed; its clips are encoded anew
        encoder, encoder_source = load_encoder()
        weights_key = weights_hash(encoder)
    if cfg.ckpt_probe:  # a trained probe: only the test sets are encoded, nothing is fit
        probe, zstats = load_probe()
    else:  # encode this seed's labelled train subset; fit and select a probe on it
        used = label_subset(train_ds.labels, cfg.label_frac, cfg.seed, classification)
        write_csv("train_subset.csv", ["index", "video", "label"], [[i, train_ds.rows[i][3], train_ds.labels[i]]
                                                                    for i in used])
        tr = features("train", train_ds, used)
        zstats = None if classification else zscore_stats(tr["label"].numpy())  # regression targets are z-scored
        print(f"probe {cfg.task} | encoder {encoder_source} | {probe_kind} | {len(used)}/{len(train_ds)} train items "
              f"(label_frac {cfg.label_frac}) | tokens/item {tr['feats'].shape[1]} x {dim}")
        t0 = time.time()
        probe = fit_linear(tr) if probe_kind == "linear" else fit_attentive(tr)
        timing["train"] = time.time() - t0
    results, external, te = evaluate_all(probe["predict"])  # test, --eval_data and --robustness sets
    if cfg.attn_maps:
        attention_maps(probe["head"], te, test_ds, cfg.attn_maps)
    runs.append(report(results, external, probe, embed_map(te) if cfg.embed_map else None))

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
    print(f"\n{cfg.task} {probe_kind} probe over {len(seeds)} seeds | "
          + ("random init, a new encoder per seed" if cfg.random_init else runs[0]["encoder"])
          + f" | {base_dir}/metrics_seeds.json")
    for c, m in agg.items():
        print(f"test {c:<20} {m['mean']:.4f} +- {m['sd']:.4f}   ("
              + ", ".join(f"seed {s}: {v:.4f}" for s, v in zip(seeds, m["values"])) + ")")
