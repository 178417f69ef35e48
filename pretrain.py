"""
EchoJEPA / V-JEPA 2 pretraining: mask spatiotemporal tubes of an echo clip and predict the latent embeddings of
the hidden tubes (from an EMA copy of the encoder) instead of their pixels. See ../shared/SPEC.md section 4.
Along the run, a frozen read-out (view, LVEF, RankMe) of the target encoder goes to out_dir/readout.csv.

    python pretrain.py                      # CPU quick start: synthetic echo, 2 cores, a few minutes
    python pretrain.py --resume             # continue out_dir/ckpt.pt (same flags; SIGTERM/SIGINT save it first)
    python pretrain.py --objective mae      # VideoMAE baseline: pixel targets; same encoder, checkpoint, read-out
    python pretrain.py --readout_context    # also read out the context encoder, beside the target
    python pretrain.py --readout none       # no read-outs (only the loss and collapse monitors)
    python pretrain.py --readout_only random out/ckpt.pt pixels     # read out checkpoints, a random init, pixels
    python pretrain.py --bench --model vitl --batch_size 64 --crop 224  # throughput, synthetic tensors, no PyAV
One node, 8 GPUs, the EchoJEPA-L recipe (several nodes: add --nnodes --node_rank --rdzv_endpoint to torchrun):
    torchrun --standalone --nproc_per_node=8 pretrain.py --model vitl --crop 224 --batch_size 128 \\
        --lr 1.75e-4 --start_lr 3.33e-5 --warmup 12000 --steps 72000 --ema 0.99925 0.99925 --init vitl.pt
"""
import argparse
import copy
import inspect
import os
import re
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from masks import MASK_POLICIES, MaskCollator
from model import CONFIGS, Encoder, build_predictor, ema_update, load_strict, pool_tokens, rankme, ridge


# -----------------------------------------------------------------------------
# config: every default here is the CPU quick start; each line is also a --flag
@dataclass
class Config:
    objective: str = "jepa"               # jepa (latent prediction) or mae (VideoMAE pixel-reconstruction baseline)
    model: str = "vitq"                   # encoder size: vitt vits vitb vitl vith vitg (official), vitq (CPU)
    rope: str = "reference"               # RoPE layout: reference (as the released weights) or interleave (corrected)
    init: str = ""                        # official V-JEPA 2 / EchoJEPA checkpoint to start from ('' = random init)
    data: str = "synthetic"               # 'synthetic' (generated on the fly), a V-JEPA CSV, or an EchoNet folder
    frames: int = 16                      # frames per clip (even: tubelet of 2)
    crop: int = 112                       # clip height = width in pixels (multiple of 16)
    fps: float = 8.0                      # target sampling rate of clip frames (EchoJEPA-L: 8)
    batch_size: int = 8                   # clips per process (global batch = batch_size * world size)
    num_workers: int = 1                  # DataLoader worker processes per rank
    steps: int = 400                      # total optimiser steps, cooldown included
    warmup: int = 40                      # linear warmup steps, start_lr -> lr
    cooldown: int = 0                     # final steps of linear decay lr -> final_lr (V-JEPA 2 cooldown phase)
    lr: float = 5e-4                      # peak learning rate (EchoJEPA rule: 5.25e-4 * global_batch / 3072)
    start_lr: float = 1e-4                # learning rate at step 0
    final_lr: float = 0.0                 # learning rate at the end of the cooldown
    wd: float = 0.04                      # AdamW weight decay on weights (ndim >= 2), 0 on biases and norms
    ema: tuple = (0.99, 0.999)            # target-encoder EMA momentum, linear from ema[0] to ema[1] over the run
    masks: str = "official"               # mask policy: official (SPEC 3) or small (long-range blocks of scale 0.35)
    mask_pairs: int = 1                   # mask pairs per generator sharing one target pass (data2vec 2.0); official 1
    reg_coeff: float = 0.0                # V-JEPA 1 variance hinge on predictions, mean(relu(1 - std)); official 0
    dtype: str = "auto"                   # float32 | bfloat16 | float16 | auto (bf16 on CUDA if supported, else fp32)
    compile: bool = None                  # torch.compile(dynamic=False) the 3 networks; default on for CUDA, off on CPU
    sdpa: bool = True                     # fused scaled_dot_product_attention (off: explicit softmax reference)
    fused_adam: bool = True               # fused AdamW kernel where the device supports it
    fused_ema: bool = True                # one foreach-lerp EMA update (off: a per-tensor loop)
    grad_ckpt: bool = False               # activation checkpointing of encoder and predictor blocks
    seed: int = 0                         # seeds model init, data draws and masks
    out_dir: str = "out"                  # checkpoint and log.txt go here
    log_interval: int = 20                # steps between log lines (the only host syncs of the loop)
    ckpt_interval: int = 200              # steps between checkpoints (one is always written at the end)
    keep_ckpts: bool = False              # also keep each checkpoint as ckpt_<step>.pt, to probe along the run
    resume: bool = False                  # continue from out_dir/ckpt.pt: weights, optimiser, step
    bench: bool = False                   # throughput benchmark on synthetic device tensors, then exit
    bench_steps: int = 20                 # timed steps of --bench (after warm-up)
    eval_interval: int = 400              # steps between read-outs of the target encoder, also at 0 and the end; 0 off
    readout_n: int = 10                   # read-out size: n train, 2.5n test clips per view; 8n, 8n A4C clips (LVEF)
    readout: str = "auto"                 # read-out set; auto: the labelled VAL split of --data if any, else synthetic
    readout_context: bool = False         # also read out the context encoder (rows 'context'), beside the target
    readout_only: list = None             # read out these checkpoints' target encoders ('random', 'pixels'), then exit


# argparse built from the block above; the comment of each line becomes its --help ('%' escaped: argparse formats it)
HELP = {k: v.replace("%", "%%") for k, v in re.findall(r"^\s+(\w+): .*?#\s*(.*)$", inspect.getsource(Config), re.M)}
CHOICES = dict(model=sorted(CONFIGS), objective=["jepa", "mae"], masks=sorted(MASK_POLICIES),
               readout=["auto", "synthetic", "data", "none"])
KINDS = {bool: dict(action=argparse.BooleanOptionalAction), tuple: dict(type=float, nargs=2), list: dict(nargs="+")}
parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
for f in fields(Config):
    kind = KINDS.get(f.type, dict(type=f.type, choices=CHOICES.get(f.name)))
    parser.add_argument(f"--{f.name}", default=f.default, help=HELP[f.name], **kind)
cfg = Config(**vars(parser.parse_args()))
cfg.ema = tuple(cfg.ema)
for bad, msg in [(cfg.crop % 16, f"--crop {cfg.crop} is not a multiple of the 16-pixel patch size"),
                 (cfg.frames % 2 or cfg.frames < 2, f"--frames {cfg.frames} must be even (tubelets of 2 frames)"),
                 (cfg.dtype not in ("auto", "float32", "bfloat16", "float16"),
                  f"--dtype {cfg.dtype}: choose float32, bfloat16, float16 or auto"),
                 (cfg.init and not os.path.isfile(cfg.init), f"--init {cfg.init}: no such file")]:
    if bad:
        parser.error(msg)


def fail(msg):
    """One clear line, no traceback wall."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)

# -----------------------------------------------------------------------------
# system: DDP from the torchrun environment, device, dtype


ddp = int(os.environ.get("RANK", -1)) != -1
device = device_type = "cuda" if torch.cuda.is_available() else "cpu"
if ddp:
    torch.distributed.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
rank, world_size = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if ddp else (0, 1)
master_process = rank == 0
if cfg.dtype == "auto":
    cfg.dtype = "bfloat16" if device_type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]
if cfg.compile is None:  # compile pays off on GPU; on CPU it costs ~100 s for <= 1.3x (NOTES-perf 4.8)
    cfg.compile = device_type == "cuda"
autocast = nullcontext() if ptdtype == torch.float32 else torch.autocast(device_type, dtype=ptdtype)
torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for any fp32 matmul left on GPU
torch.backends.cudnn.allow_tf32 = True
# Same seed on every rank: identical initial weights, so the target encoder (outside DDP) starts identical too.
# Data and masks are not drawn from this generator; they are pure functions of (seed, step, rank, i).
torch.manual_seed(cfg.seed)
if master_process and not cfg.bench:  # find out now, not at the first checkpoint hours later
    try:
        os.makedirs(cfg.out_dir, exist_ok=True)
        open(os.path.join(cfg.out_dir, ".write_test"), "w").close()
        os.remove(os.path.join(cfg.out_dir, ".write_test"))
    except OSError as e:
        fail(f"--out_dir {cfg.out_dir} is not writable ({e.strerror}); choose another folder")

# -----------------------------------------------------------------------------
# model: context encoder + predictor (trained), target encoder (EMA copy, never in DDP, no grads)

mcfg = replace(CONFIGS[cfg.model], rope=cfg.rope)
mae = cfg.objective == "mae"
grid = (cfg.frames // 2, cfg.crop // 16, cfg.crop // 16)  # (T', H', W') tokens: tubelets of 2 x 16 x 16 pixels
patch_dim = mcfg.in_chans * mcfg.tubelet_size * mcfg.patch_size ** 2  # pixels per tubelet
encoder = Encoder(mcfg).to(device)
predictor = build_predictor(mcfg, out_dim=patch_dim if mae else None).to(device)  # MAE: the pixel decoder
# MAE has no EMA target: "target_encoder" is the encoder itself, so checkpoints keep one format for probe.py
target_encoder = encoder if mae else copy.deepcopy(encoder).requires_grad_(False)  # updated only by EMA
if cfg.init:  # official files: keys `encoder`, `predictor`, `target_encoder`, prefixed `module.backbone.`
    try:
        ckpt = torch.load(cfg.init, map_location="cpu", weights_only=False)
    except Exception as e:
        fail(f"--init {cfg.init}: cannot read the checkpoint ({type(e).__name__}: {e})")
    if not isinstance(ckpt, dict) or not ({"encoder", "target_encoder"} & set(ckpt)):
        fail(f"--init {cfg.init}: expected a dict with 'encoder'/'target_encoder' (and 'predictor') entries")
    try:  # a file with one of the two encoders starts both from it
        load_strict(encoder, ckpt.get("encoder", ckpt.get("target_encoder")), f"--init {cfg.init} encoder")
        if "predictor" in ckpt:
            load_strict(predictor, ckpt["predictor"], f"--init {cfg.init} predictor")
        elif master_process:
            print(f"--init {cfg.init} has no 'predictor': the predictor starts from random init")
        if not mae:
            load_strict(target_encoder, ckpt.get("target_encoder", ckpt.get("encoder")),
                        f"--init {cfg.init} target_encoder")
    except ValueError as e:
        fail(str(e))
    del ckpt
for blk in [b for m in (encoder, predictor, target_encoder) for b in m.modules() if hasattr(b, "use_sdpa")]:
    blk.use_sdpa = cfg.sdpa  # False: the explicit softmax attention, the slow reference
encoder.grad_checkpointing = predictor.grad_checkpointing = cfg.grad_ckpt

# AdamW with V-JEPA 2's groups: weight decay on weights and mask tokens (ndim >= 2), none on biases and norms.
params = [p for m in (encoder, predictor) for p in m.parameters()]
opt = torch.optim.AdamW([dict(params=[p for p in params if p.ndim >= 2], weight_decay=cfg.wd),
                         dict(params=[p for p in params if p.ndim < 2], weight_decay=0.0)],
                        lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=cfg.fused_adam or None)
scaler = torch.amp.GradScaler(device_type, enabled=ptdtype == torch.float16)  # only fp16 needs loss scaling

step = 0
ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
if cfg.resume:  # resume = load and set step: data, masks and schedules are pure functions of the step
    if not os.path.isfile(ckpt_path):
        fail(f"--resume: no checkpoint at {ckpt_path}")
    try:
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        for name, m in dict(encoder=encoder, predictor=predictor, target_encoder=target_encoder).items():
            load_strict(m, ckpt[name], f"{ckpt_path} {name}")
        opt.load_state_dict(ckpt["opt"])
        step = ckpt["step"]
    except ValueError as e:
        fail(str(e))
    except Exception as e:
        fail(f"{ckpt_path} is corrupt or truncated ({type(e).__name__}: {e}); delete it or restore a backup")
    del ckpt
    if master_process:
        print(f"resumed from {ckpt_path} at step {step}")

raw_encoder, raw_predictor = encoder, predictor  # un-wrapped handles: state_dict keys stay plain
if cfg.compile:
    encoder = torch.compile(encoder, dynamic=False)  # fixed mask budgets -> static shapes, no recompiles
    predictor = torch.compile(predictor, dynamic=False)
    target_encoder = encoder if mae else torch.compile(target_encoder, dynamic=False)
if ddp:  # static_graph: the encoder runs twice per step, and mask tokens 1..9 never get a gradient
    encoder = torch.nn.parallel.DistributedDataParallel(encoder, static_graph=True)
    predictor = torch.nn.parallel.DistributedDataParallel(predictor, static_graph=True)


# -----------------------------------------------------------------------------
# one training step: schedules (pure functions of the step, so resuming is setting the step), the JEPA loss (or the
# MAE baseline's), AdamW, then the EMA of the target encoder; and its FLOPs
def get_lr(it):
    """Warmup-stable-decay (V-JEPA 2 WSDSchedule): linear start_lr -> lr, constant, then linear -> final_lr."""
    if it < cfg.warmup:
        return cfg.start_lr + (cfg.lr - cfg.start_lr) * it / cfg.warmup
    decay_start = cfg.steps - cfg.cooldown
    if it < decay_start:
        return cfg.lr
    return cfg.lr + (cfg.final_lr - cfg.lr) * (it - decay_start) / max(1, cfg.cooldown)


def get_ema(it):
    """EMA momentum, linear from ema[0] to ema[1] over the run (EchoJEPA: 0.99925 constant)."""
    return cfg.ema[0] + (cfg.ema[1] - cfg.ema[0]) * it / max(1, cfg.steps)


def jepa_loss(clips, masks):
    """L1 between predicted and target latents of the masked tubes, averaged over the mask generators; plus, with
    --reg_coeff, V-JEPA 1's hinge on the predictions' std over tokens (facebookresearch/jepa app/vjepa/train.py
    reg_fn: sqrt(var over each sample's target tokens + 1e-4) per feature, averaged over generators)."""
    with torch.no_grad():
        h = target_encoder(clips)
        h = F.layer_norm(h, (h.size(-1),))  # non-affine LN on top of the encoder's own final norm (V-JEPA)
    loss, stats, pstd = 0.0, [], 0.0
    for ctx, tgt in masks:
        z = predictor(encoder(clips, ctx), ctx, tgt, grid)  # (B, Kt, D)
        ht = torch.gather(h, 1, tgt.unsqueeze(-1).expand(-1, -1, h.size(-1)))  # (B, Kt, D)
        loss = loss + (z.float() - ht.float()).abs().mean()
        pstd = pstd + torch.sqrt(z.float().var(dim=1) + 1e-4) / len(masks)  # (B, D)
        # collapse monitor: mean per-dimension std of targets and predictions (jepa's input_var / pstd_z)
        stats.append(torch.stack([ht.float().std(dim=(0, 1)).mean(), z.detach().float().std(dim=(0, 1)).mean()]))
    loss = loss / len(masks)
    if cfg.reg_coeff > 0:  # 0 in every released V-JEPA / EchoJEPA config
        loss = loss + cfg.reg_coeff * F.relu(1 - pstd).mean()
    return loss, torch.stack(stats).mean(0)


def tubelets(clips, t=2, p=16):
    """The pixels of each tubelet, in token order: clips (B, C, T, H, W) -> (B, N, t*p*p, C)."""
    B, C, T, H, W = clips.shape
    x = clips.view(B, C, T // t, t, H // p, p, W // p, p).permute(0, 2, 4, 6, 3, 5, 7, 1)  # (B, T', H', W', t, p, p, C)
    return x.reshape(B, -1, t * p * p, C)  # (B, N, t*p*p, C)


def mae_loss(clips, masks):
    """VideoMAE baseline: the same encoder on the 10 % visible tubes, the predictor as pixel decoder, MSE on
    per-patch normalised pixels of the hidden tubelets. Only this function and the tube mask differ from JEPA."""
    (ctx, tgt), = masks
    z = predictor(encoder(clips, ctx), ctx, tgt, grid)  # (B, Kt, 3*t*p*p)
    x = tubelets(clips)  # (B, N, t*p*p, C)
    x = (x - x.mean(2, keepdim=True)) / (x.var(2, keepdim=True).sqrt() + 1e-6)  # per patch and channel (VideoMAE)
    x = torch.gather(x.flatten(2), 1, tgt.unsqueeze(-1).expand(-1, -1, z.size(-1)))  # (B, Kt, t*p*p*C)
    stats = torch.stack([x.std(dim=(0, 1)).mean(), z.detach().float().std(dim=(0, 1)).mean()])
    return ((z.float() - x) ** 2).mean(), stats


def train_step(clips, masks, it):
    for g in opt.param_groups:
        g["lr"] = get_lr(it)
    with autocast:
        loss, stats = (mae_loss if cfg.objective == "mae" else jepa_loss)(clips, masks)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    if cfg.objective == "jepa":  # EMA after every optimiser step
        ema_update(target_encoder, raw_encoder, get_ema(it), fused=cfg.fused_ema)
    return loss.detach(), stats


def step_flops(mcfg, grid, mask_budgets, target=True, out_dim=None):
    """Model FLOPs of one step per clip, (matmul, attention) (NOTES-perf 1.3): a ViT forward over n tokens costs
    L (2 n P + 4 n^2 d), a backward twice that. The target encoder runs forward on all N tokens; per mask, the context
    encoder (C tokens) and the predictor (C + K) forward and backward. MAE (target=False): no target pass."""
    N = grid[0] * grid[1] * grid[2]
    d, dp, L, Lp = mcfg.dim, mcfg.pred_dim, mcfg.depth, mcfg.pred_depth
    P = 2 * d * d * 2 + 2 * d * int(d * mcfg.mlp_ratio)  # qkv 3d^2 + proj d^2 + fc1, fc2
    Pp = 4 * dp * dp + 2 * dp * int(dp * mcfg.mlp_ratio)
    Pe = mcfg.in_chans * mcfg.tubelet_size * mcfg.patch_size ** 2 * d
    mm = (L * 2 * N * P + 2 * N * Pe) if target else 0
    att = L * 4 * N * N * d if target else 0
    for C, K in mask_budgets:
        mm += 3 * L * 2 * C * P + 4 * C * Pe + 3 * Lp * 2 * (C + K) * Pp + 6 * (C * d + K * (out_dim or d)) * dp
        att += 3 * (L * 4 * C * C * d + Lp * 4 * (C + K) ** 2 * dp)
    return mm, att


# Masks are data: the DataLoader's collate function draws them on CPU workers, per sample, from its key.
global_batch = cfg.batch_size * world_size
collate = MaskCollator(grid, global_batch, cfg.seed, cfg.objective, cfg.masks, cfg.mask_pairs)
try:  # the masks of step 0 (clips not needed): fail now, in one line, if the clip is too small for the mask budgets
    masks0 = collate([(key, torch.zeros(())) for key in range(cfg.batch_size)])[1]
except RuntimeError as e:
    fail(str(e))
mask_budgets = [(c.shape[1], t.shape[1]) for c, t in masks0]  # (context, target) tokens per mask
flops_per_clip = sum(step_flops(mcfg, grid, mask_budgets, target=not mae, out_dim=patch_dim if mae else None))

# -----------------------------------------------------------------------------
# benchmark mode: synthetic device tensors, warm-up (compile included), then timed steps

PEAK_TFLOPS = [("H100 PCIe", 756), ("H100", 989), ("H200", 989), ("A100", 312)]  # dense bf16, no sparsity
if cfg.bench:
    B = cfg.batch_size
    clips = torch.randn(B, 3, cfg.frames, cfg.crop, cfg.crop, device=device)
    masks = [(c.to(device), t.to(device)) for c, t in masks0]
    t0 = time.perf_counter()
    for i in range(3):  # warm-up: compile, cudnn autotune, allocator
        train_step(clips, masks, i)
    if device_type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    warm_s, times = time.perf_counter() - t0, []
    for i in range(cfg.bench_steps):
        t0 = time.perf_counter()
        train_step(clips, masks, i)
        times.append(time.perf_counter() - t0)  # CPU steps are synchronous; on GPU only the events below count
    if device_type == "cuda":
        end.record()
        torch.cuda.synchronize()
        dt, spread = start.elapsed_time(end) / 1e3 / cfg.bench_steps, ""
    else:  # shared CPUs are noisy: the median step, with the mean beside it
        dt, spread = float(np.median(times)), f" (median; mean {1e3 * np.mean(times):.1f})"
    name = torch.cuda.get_device_name(device) if device_type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    # MFU against the peak of a known GPU; fp32 or an unknown device gets 'n/a', never a guess
    peak = None if ptdtype == torch.float32 else \
        next((tf * 1e12 for key, tf in PEAK_TFLOPS if key.replace(" ", "") in name.replace(" ", "")), None)
    mem = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device_type == "cuda" else "n/a"
    mfu = f"{100 * flops_per_clip * B / dt / peak:.1f} %" if peak else "n/a"
    print(f"bench | {name} | {cfg.objective} {cfg.model} {cfg.frames}x{cfg.crop}^2 batch {B} {cfg.dtype} "
          f"compile={cfg.compile} grad_ckpt={cfg.grad_ckpt}")
    print(f"bench | warm-up {warm_s:.1f} s | {dt * 1e3:.1f} ms/step{spread} | {B / dt:.1f} clips/s | peak mem {mem} | "
          f"{flops_per_clip / 1e12:.3f} TFLOP/clip (model) | {flops_per_clip * B / dt / 1e12:.2f} TFLOP/s | MFU {mfu}")
    if ddp:
        torch.distributed.destroy_process_group()
    sys.exit(0)

import data  # noqa: E402  (after the bench exit: --bench needs no video stack)

# -----------------------------------------------------------------------------
# online read-out: is the representation learning? Closed-form ridge read-outs (model.ridge, as probe.py --probe
# linear) of a frozen encoder's pooled tokens on a fixed labelled set, like solo-learn's online monitors. Step 0
# is the random init, the baseline of every curve; 'pixels' (raw tubelets, no encoder) is the floor.

READOUT_BASE = 3 * 10**9  # read-out patients: disjoint from the pretraining stream (keys < 2^20) and data.SPLIT_BASE
READOUT_N = dict(view_train=cfg.readout_n, view_test=round(2.5 * cfg.readout_n), ef_train=8 * cfg.readout_n,
                 ef_test=8 * cfg.readout_n)  # clips per view class; A4C clips (one per patient) for LVEF


def data_readout_rows():
    """(rows of the --data VAL split with LVEF labels, why not) for --readout auto/data: an EchoNet FileList.csv,
    a folder's lvef_val.csv or a '{split}' CSV; (None, reason) when there are none, or too few, or one label only."""
    if cfg.data == "synthetic":
        return None, "--data synthetic"
    try:
        rows = data.find_rows(cfg.data, "lvef", "val")
    except (ValueError, FileNotFoundError) as e:
        return None, f"no labelled VAL split in {cfg.data} ({e})"
    if len(rows) < 16 or len({r[1] for r in rows}) < 2:  # 8 train + 8 test at least: fewer give R2 of noise
        return None, f"{cfg.data}: {len(rows)} VAL rows with {len({r[1] for r in rows})} distinct labels (need 16, 2)"
    return rows[:READOUT_N["ef_train"] + READOUT_N["ef_test"]], ""


def readout_set():
    """The read-out clips (uint8 (T, H, W), decoded or rendered once), labels and index sets. Real data: LVEF only,
    the VAL rows split in halves. Synthetic (the same patients every run): views and LVEF (one A4C clip each)."""
    rows, why = data_readout_rows() if cfg.readout in ("auto", "data") else (None, f"--readout {cfg.readout}")
    if rows is None and cfg.readout == "data":
        fail(f"--readout data: {why}")
    if rows is not None:
        ds = data.EchoDataset(rows, cfg.frames, cfg.crop, cfg.fps, cfg.seed, pretrain=False)
        clips = [ds.load(r[0][0], 1, None)[0] for r in tqdm(rows, desc="read read-out set", unit="video", leave=False)]
        ar, half = torch.arange(len(rows)), len(rows) // 2
        return dict(clips=clips, view=None, ef=torch.tensor([r[1] for r in rows], dtype=torch.float64),
                    ef_train=ar[:half], ef_test=ar[half:], source=f"{cfg.data} VAL ({len(rows)} labelled videos)")
    nv, ne = READOUT_N["view_train"] + READOUT_N["view_test"], READOUT_N["ef_train"] + READOUT_N["ef_test"]
    items = [(READOUT_BASE + i, v) for i in range(nv) for v in data.VIEWS]
    items += [(READOUT_BASE + 10**6 + i, "A4C") for i in range(ne)]
    n_frames = max(data.SYNTH_FRAMES, cfg.frames * int(data.SYNTH_FPS // cfg.fps))
    idx = data.clip_indices(n_frames, data.SYNTH_FPS, cfg.frames, cfg.fps)[0]  # the centred clip, as probe.py's eval
    bar = tqdm(items, desc="render read-out set", unit="clip", dynamic_ncols=True, leave=False)
    rendered = [data.synth_video(0, i, view, frames=int(idx.max()) + 1, frame_idx=idx) for i, view in bar]
    n_view, vt, et = len(data.VIEWS) * nv, len(data.VIEWS) * READOUT_N["view_train"], READOUT_N["ef_train"]
    ar = torch.arange(len(items))  # clips: every view of nv patients, then ne A4C clips
    return dict(clips=[v for v, _ in rendered], view=torch.tensor([lab["view_id"] for _, lab in rendered])[:n_view],
                ef=torch.tensor([lab["EF"] for _, lab in rendered], dtype=torch.float64), view_train=ar[:vt],
                view_test=ar[vt:n_view], ef_train=ar[n_view:n_view + et], ef_test=ar[n_view + et:],
                source="synthetic" + (f" ({why})" if cfg.data != "synthetic" else ""))


@torch.no_grad()
def readout_features(enc, clips):
    """model.pool_tokens of the frozen tokens (mean (n, D), grid (n, 8 D)), float64 on the CPU; enc None = the
    raw-pixel control, each tubelet's pixels (3 * 2 * 16 * 16 values) taken as its token."""
    pooled = []
    for i in range(0, len(clips), cfg.batch_size):
        x = torch.stack([data.eval_transform(c, cfg.crop) for c in clips[i:i + cfg.batch_size]]).to(device)
        if enc is None:
            z = tubelets(x).flatten(2)  # (B, N, t*p*p*C)
        else:
            with autocast:
                z = enc(x).float()  # (B, N, D)
        pooled.append({k: v.cpu() for k, v in pool_tokens(z, grid).items()})
    return {k: torch.cat([p[k] for p in pooled]).double() for k in ("mean", "grid")}


def log(line):
    """Print a line above the progress bar and append it to out_dir/log.txt (rank 0 of a training run)."""
    tqdm.write(line)
    if log_file is not None:
        log_file.write(line + "\n")
        log_file.flush()


def readout(enc, it, what="target"):
    """Read out a frozen encoder (None: raw pixels) at step it: one log line, one row of out_dir/readout.csv."""
    global ro
    t0, ro = time.perf_counter(), ro or readout_set()  # the set is built at the first read-out
    was_training = enc is not None and enc.training
    feats = readout_features(enc if enc is None else enc.eval(), ro["clips"])
    if was_training:
        enc.train()
    ef_tr, ef_te = ro["ef"][ro["ef_train"]], ro["ef"][ro["ef_test"]]
    row = dict(step=it, encoder=what)
    for name, f in feats.items():
        row[f"view_acc_{name}"] = float("nan")  # real data: no view labels
        if ro["view"] is not None:  # ridge on one-hot views, the class with the highest score
            W, b, _ = ridge(f[ro["view_train"]], F.one_hot(ro["view"][ro["view_train"]], len(data.VIEWS)).double())
            pred = (f[ro["view_test"]] @ W + b).argmax(1)
            row[f"view_acc_{name}"] = float((pred == ro["view"][ro["view_test"]]).double().mean())
        W, b, _ = ridge(f[ro["ef_train"]], ef_tr[:, None])
        err = (f[ro["ef_test"]] @ W + b)[:, 0] - ef_te
        row[f"ef_mae_{name}"] = float(err.abs().mean())
        row[f"ef_r2_{name}"] = float(1 - (err ** 2).sum() / ((ef_te - ef_te.mean()) ** 2).sum())
    row["ef_mae_meanpred"] = float((ef_te - ef_tr.mean()).abs().mean())  # the baseline of an EF read-out
    row["rankme"] = rankme(feats["mean"])
    row["seconds"] = time.perf_counter() - t0
    views = "" if ro["view"] is None else \
        f"view acc {row['view_acc_mean']:.3f} (mean pool) {row['view_acc_grid']:.3f} (grid) | "
    line = (f"readout step {it:6d} | {views}LVEF MAE {row['ef_mae_mean']:.2f} R2 {row['ef_r2_mean']:.2f} (mean) "
            f"{row['ef_mae_grid']:.2f} R2 {row['ef_r2_grid']:.2f} (grid), mean predictor {row['ef_mae_meanpred']:.2f}"
            f" | RankMe {row['rankme']:.1f} | {row['seconds']:.1f} s" + ("" if what == "target" else f" | {what}")
            + ("" if ro["source"] == "synthetic" else f" | {ro['source']}"))
    log(line)
    path = os.path.join(cfg.out_dir, "readout.csv")
    new = not os.path.isfile(path)
    with open(path, "a") as fh:
        fh.write((",".join(row) + "\n" if new else "") + ",".join(f"{v:.6g}" if isinstance(v, float) else str(v)
                                                               for v in row.values()) + "\n")


ro, log_file = None, None  # the read-out set, built at the first read-out; the training log (rank 0)
if cfg.readout_only:  # read out saved checkpoints (e.g. --keep_ckpts files), a random init or the pixels, then exit
    for path in cfg.readout_only:
        torch.manual_seed(cfg.seed)  # random: the same weights as step 0 of a run with this --seed and --model
        if path == "random":
            readout(Encoder(mcfg).to(device), 0, f"random init (seed {cfg.seed})")
        elif path == "pixels":
            readout(None, 0, "pixels")
        else:
            try:
                ck = torch.load(path, map_location="cpu", weights_only=False)
                enc = Encoder(replace(CONFIGS[ck["config"]["model"]], rope=ck["config"].get("rope", "reference")))
                load_strict(enc, ck["target_encoder"], f"{path} target_encoder")
            except ValueError as e:
                fail(str(e))
            except Exception as e:
                fail(f"{path}: not a pretrain.py checkpoint ({type(e).__name__}: {e})")
            readout(enc.to(device), int(ck.get("step", 0)), path)
    sys.exit(0)

# -----------------------------------------------------------------------------
# data: sample key -> clip is deterministic, batches of keys are a pure function of the step

try:
    dataset = data.build_pretrain_dataset(cfg.data, cfg.frames, cfg.crop, cfg.fps, cfg.seed)
except (ValueError, FileNotFoundError) as e:
    fail(str(e))


class StepSamples(torch.utils.data.Dataset):
    """Step it -> its (key, clip) samples, key = it * global_batch + rank * batch_size + i: the key seeds the clip
    and, in the collate function, that sample's masks."""
    def __getitem__(self, it):
        k0 = (it * world_size + rank) * cfg.batch_size
        return [(key, dataset[key]) for key in range(k0, k0 + cfg.batch_size)]


loader = torch.utils.data.DataLoader(  # batch_size None: each item is already a whole batch, collated in a worker
    StepSamples(), batch_size=None, sampler=range(step, cfg.steps), collate_fn=collate,
    num_workers=cfg.num_workers, pin_memory=device_type == "cuda", persistent_workers=cfg.num_workers > 0,
    prefetch_factor=4 if cfg.num_workers > 0 else None)


def save_checkpoint(it, loss):
    """One dict (SPEC section 4), plain keys, written to a temp file then renamed: a kill never leaves it torn."""
    if not all(torch.isfinite(p).all() for p in raw_encoder.parameters()):  # never overwrite a good one with NaNs
        fail(f"encoder weights became NaN/inf before step {it}; stopping. {ckpt_path} (if any) was kept")
    target = raw_encoder if mae else getattr(target_encoder, "_orig_mod", target_encoder)
    ckpt = dict(encoder=raw_encoder.state_dict(), predictor=raw_predictor.state_dict(),
                target_encoder=target.state_dict(), opt=opt.state_dict(), step=it, itr=it,
                epoch=it * global_batch // max(1, len(dataset)), loss=loss, batch_size=cfg.batch_size,
                world_size=world_size, lr=get_lr(max(0, it - 1)), config=asdict(cfg))
    torch.save(ckpt, ckpt_path + ".tmp")
    os.replace(ckpt_path + ".tmp", ckpt_path)
    if cfg.keep_ckpts:  # a hard link (no copy): the next os.replace gives ckpt.pt a new file and leaves this one
        kept = os.path.join(cfg.out_dir, f"ckpt_{it:06d}.pt")
        if os.path.exists(kept):  # a resumed run saving the same step again
            os.remove(kept)
        try:
            os.link(ckpt_path, kept)
        except OSError:  # a file system without hard links: the same bytes, copied
            shutil.copyfile(ckpt_path, kept)


# Preemption: SIGTERM/SIGINT only set a flag; the loop saves at the next step boundary and exits 0.
stop_signal = []
signal.signal(signal.SIGTERM, lambda sig, frame: stop_signal.append(sig))
signal.signal(signal.SIGINT, lambda sig, frame: stop_signal.append(sig))

# -----------------------------------------------------------------------------
# training loop

if master_process:
    n_enc, n_pred = (sum(p.numel() for p in m.parameters()) for m in (raw_encoder, raw_predictor))
    print(f"{cfg.objective} {cfg.model}: encoder {n_enc / 1e6:.2f}M, predictor {n_pred / 1e6:.2f}M params | "
          f"grid {grid} | masks (ctx, tgt) {mask_budgets} | {cfg.dtype} on {device} x{world_size} | "
          f"data {cfg.data} ({len(dataset)} videos) | {flops_per_clip / 1e9:.1f} GFLOP/clip")
    log_file = open(os.path.join(cfg.out_dir, "log.txt"), "a")
    log_file.write(f"config {asdict(cfg)}\n")

pbar = tqdm(total=cfg.steps, initial=step, disable=not master_process, dynamic_ncols=True, desc="pretrain")
acc, n_acc = torch.zeros(3, device=device), 0  # summed (loss, std tgt, std pred) since the last log line
bad_step = torch.full((), -1, device=device)  # first step with a non-finite loss, checked without a sync
t_data, t_log, last_loss = 0.0, time.perf_counter(), float("nan")
data_iter = iter(loader)
readout_target = raw_encoder if mae else getattr(target_encoder, "_orig_mod", target_encoder)
readouts = master_process and cfg.eval_interval > 0 and cfg.readout != "none"
if readouts and step == 0:
    readout(readout_target, 0)
    readout(None, 0, "pixels")  # the floor that needs no learning (the context encoder equals the target at step 0)
    t_log = time.perf_counter()
while step < cfg.steps:
    t0 = time.perf_counter()
    clips, masks = next(data_iter)
    t_data += time.perf_counter() - t0
    clips = clips.to(device, non_blocking=True)
    masks = [(c.to(device, non_blocking=True), t.to(device, non_blocking=True)) for c, t in masks]
    loss, stats = train_step(clips, masks, step)
    bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss), step, bad_step)
    acc += torch.cat([loss.view(1), stats])
    n_acc += 1
    step += 1
    pbar.update(1)

    stop = bool(stop_signal) and not ddp
    if ddp and step % cfg.log_interval == 0:  # all ranks stop at the same step: agree at log steps (a sync anyway)
        flag = torch.tensor(float(bool(stop_signal)), device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        stop = flag.item() > 0
    last = step == cfg.steps or stop
    if step % cfg.log_interval == 0 or step % cfg.ckpt_interval == 0 or last:
        vals = acc / n_acc
        if ddp:  # average the logged numbers over ranks (logging only; gradients were reduced by DDP)
            torch.distributed.all_reduce(vals)
            vals /= world_size
        if bad_step.item() >= 0:  # the one .item() sync of the loop
            fail(f"loss became NaN/inf at step {bad_step.item()}; stopping. The last good checkpoint "
                 f"({ckpt_path}, if any) was kept; lower --lr or check the data")
        last_loss, std_t, std_p = vals.tolist()
        dt = (time.perf_counter() - t_log) / n_acc
        if master_process:
            line = (f"step {step:6d} | loss {last_loss:.6f} | lr {get_lr(step - 1):.2e} | {dt * 1e3:.0f} ms/step "
                    f"(data {t_data / n_acc * 1e3:.0f} ms) | {global_batch / dt:.1f} clips/s | "
                    f"std tgt {std_t:.3f} pred {std_p:.3f}")
            pbar.set_postfix_str(f"loss {last_loss:.4f} lr {get_lr(step - 1):.1e} {global_batch / dt:.1f} clips/s")
            if step % cfg.log_interval == 0 or last:
                log(line)
        acc.zero_()
        n_acc, t_data, t_log = 0, 0.0, time.perf_counter()
        if master_process and (step % cfg.ckpt_interval == 0 or last):
            save_checkpoint(step, last_loss)
    if readouts and (step % cfg.eval_interval == 0 or step == cfg.steps):
        readout(readout_target, step)  # rank 0 only: the others wait for it at the next gradient all-reduce
        if cfg.readout_context and not mae:
            readout(raw_encoder, step, "context")
        t_log = time.perf_counter()  # the read-out's seconds are not training ms/step
    if stop:
        if master_process:
            pbar.write(f"received signal {stop_signal[0] if stop_signal else '(on another rank)'}: "
                       f"saved {ckpt_path} at step {step}; continue with --resume")
        break

pbar.close()  # teardown
if master_process:
    if dataset.n_skipped.value:  # undecodable videos were replaced by the next row, each logged when met
        log(dataset.skip_summary())
    print(f"done: step {step}, loss {last_loss:.4f}, checkpoint {ckpt_path}")
    log_file.close()
if ddp:
    torch.distributed.destroy_process_group()
