"""
All tests of nano-EchoJEPA, CPU only, under 45 s on 2 cores (about 25 s measured on the development machine).

    python test_all.py            # every test; last line "N passed, M failed"
    python test_all.py mask ema   # only tests whose name contains one of the words
    python test_all.py --help     # this text
    pytest test_all.py            # pytest collects the same test_* functions

Each test is a plain function with bare asserts, so pytest is not a dependency.
"""
import os
import sys
import time
import tempfile
import traceback

import numpy as np
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
HERE = os.path.dirname(os.path.abspath(__file__))


import ast
import contextlib
import csv
import functools
import json
import math
import socket
import subprocess
import types

import torch.nn.functional as F

import masks
import model
from model import CONFIGS, AttentiveProbe, Encoder, Predictor, build_predictor


def run(args, timeout=120, env=None):
    """Run a script of this repo in a subprocess; returns (returncode, stdout, stderr)."""
    p = subprocess.run([sys.executable, *args], cwd=HERE, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    return p.returncode, p.stdout, p.stderr


@functools.lru_cache(maxsize=None)
def parsed(path):
    """The syntax tree of a script, parsed once per test session (tests read pretrain.py / probe.py many times)."""
    return ast.parse(open(os.path.join(HERE, path)).read())


@functools.lru_cache(maxsize=None)
def compiled(path):
    """A script's code object, compiled once per test session (runpy.run_path recompiles on every call)."""
    full = os.path.join(HERE, path)
    return compile(open(full).read(), full, "exec")


def run_main(path):
    """Execute a script as __main__ in this process, as runpy.run_path does (a fresh module for __main__, so that
    inspect.getsource finds the script's own classes), from the cached code object."""
    mod = types.ModuleType("__main__")
    mod.__file__, mod.__builtins__ = os.path.join(HERE, path), __builtins__
    saved = sys.modules["__main__"]
    sys.modules["__main__"] = mod
    try:
        exec(compiled(path), mod.__dict__)
    finally:
        sys.modules["__main__"] = saved


def script_functions(path, names, **globs):
    """Top-level functions of a script (read top to bottom, not importable) executed against the given globals,
    so the exact code the script runs is what gets tested."""
    tree = parsed(path)
    body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    assert {n.name for n in body} == set(names), f"missing in {path}: {set(names) - {n.name for n in body}}"
    ns = dict(globs)
    exec(compile(ast.Module(body, type_ignores=[]), path, "exec"), ns)
    return ns


def tiny_cfg(**kw):
    c = dict(dim=96, depth=2, heads=3, pred_dim=48, pred_depth=2, pred_heads=3)
    c.update(kw)
    return model.ViTConfig(**c)


# -----------------------------------------------------------------------------
# model


def test_model_shapes_and_param_counts():
    # every official size (and alias) on the meta device: no memory, exact shapes
    assert {"vitt", "vits", "vitb", "vitl", "vith", "vitg", "vit_tiny", "vit_small", "vit_base", "vit_large",
            "vit_huge", "vit_giant"} <= set(CONFIGS)
    for name in ("vit_tiny", "vit_small", "vit_base", "vit_large", "vit_huge", "vit_giant"):
        cfg = CONFIGS[name]
        assert CONFIGS["vit" + name[4]] is cfg
        with torch.device("meta"):  # meta tensors: no memory; depth 1 (same widths and heads) keeps it fast
            import dataclasses
            small = dataclasses.replace(cfg, depth=1, pred_depth=1)
            enc, pred = Encoder(small), build_predictor(small)
            x = torch.empty(2, 3, 4, 48, 32)  # non-square: grid (2, 3, 2)
            idx = torch.zeros(2, 5, dtype=torch.long)
            z = enc(x, idx)
            assert z.shape == (2, 5, cfg.dim), name
            assert pred(z, idx, idx[:, :3], (2, 3, 2)).shape == (2, 3, cfg.dim), name
    with torch.device("meta"):
        assert Encoder(CONFIGS["vitb"])(torch.empty(1, 3, 4, 48, 32)).shape == (1, 12, 768)
    with torch.device("meta"):
        n_l = sum(p.numel() for p in Encoder(CONFIGS["vit_large"]).parameters())
        n_p = sum(p.numel() for p in build_predictor(CONFIGS["vitl"]).parameters())
        n_g = sum(p.numel() for p in Encoder(CONFIGS["vitg"]).parameters())
    assert 303e6 <= n_l <= 305e6, n_l
    assert 21e6 <= n_p <= 23e6, n_p
    assert 0.95e9 <= n_g <= 1.05e9, n_g
    assert CONFIGS["vitg"].heads == 22 and int(CONFIGS["vitg"].dim * CONFIGS["vitg"].mlp_ratio) == 6144
    # real forward at a non-square geometry on CPU
    enc, pred = Encoder(tiny_cfg()), build_predictor(tiny_cfg())
    x = torch.randn(2, 3, 6, 32, 48)
    z = enc(x, torch.tensor([[0, 5, 7], [1, 2, 17]]))
    assert pred(z, torch.tensor([[0, 5, 7], [1, 2, 17]]), torch.tensor([[3, 4], [8, 9]]), (3, 2, 3)).shape == (2, 2, 96)


def test_model_official_keys():
    enc, pred = Encoder(CONFIGS["vitq"]), build_predictor(CONFIGS["vitq"])
    ek, pk = set(enc.state_dict()), set(pred.state_dict())
    assert {"patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias",
            "blocks.0.norm1.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias", "blocks.0.attn.proj.weight",
            "blocks.0.norm2.bias", "blocks.0.mlp.fc1.weight", "blocks.5.mlp.fc2.bias"} <= ek
    assert all(k.split(".")[0] in ("patch_embed", "blocks", "norm") for k in ek)
    assert {"predictor_embed.weight", "predictor_norm.weight", "predictor_proj.bias", "predictor_blocks.3.attn.qkv.weight"} <= pk
    assert {f"mask_tokens.{i}" for i in range(10)} <= pk
    probe = AttentiveProbe(64, 5, depth=4, heads=4)
    assert all(k.split(".")[0] in ("pooler", "linear") for k in probe.state_dict())
    assert {"pooler.query_tokens", "pooler.blocks.2.attn.qkv.weight", "pooler.cross_attention_block.xattn.q.weight",
            "pooler.cross_attention_block.xattn.kv.weight", "pooler.cross_attention_block.mlp.fc2.weight",
            "pooler.cross_attention_block.norm1.weight", "linear.weight"} <= set(probe.state_dict())
    assert not any("xattn.proj" in k for k in probe.state_dict())  # no output projection in cross-attention


def test_model_init_matches_reference():
    torch.manual_seed(0)
    cfg = tiny_cfg(depth=4)
    enc = Encoder(cfg)
    for i, blk in enumerate(enc.blocks):
        expect = 0.02 / math.sqrt(2 * (i + 1))  # trunc-normal std, rescaled per layer
        assert abs(blk.attn.proj.weight.std().item() - expect) < 0.25 * expect
        assert abs(blk.attn.qkv.weight.std().item() - 0.02) < 0.003
        assert blk.attn.qkv.bias.abs().max() == 0 and (blk.norm1.weight == 1).all()
    pred = build_predictor(cfg)
    assert all((t == 0).all() for t in pred.mask_tokens)  # zero-init mask tokens


def test_strip_prefixes_and_load():
    enc = Encoder(tiny_cfg())
    official = {f"module.backbone.{k}": v.clone() + 1 for k, v in enc.state_dict().items()}
    enc2 = Encoder(tiny_cfg())
    model.load_strict(enc2, official)
    assert all(torch.equal(enc2.state_dict()[k], v + 1) for k, v in enc.state_dict().items())
    bad = dict(official)
    bad.pop("module.backbone.norm.weight")
    bad["module.backbone.extra"] = torch.zeros(1)
    bad["module.backbone.blocks.0.mlp.fc1.weight"] = torch.zeros(3, 3)
    try:
        model.load_strict(enc2, bad, "ckpt")
        raise AssertionError("mismatch not detected")
    except ValueError as e:
        msg = str(e)
        assert "norm.weight" in msg and "extra" in msg and "blocks.0.mlp.fc1.weight (3, 3)" in msg, msg


def test_rope_matches_elementwise_formula():
    # slow reference: rotate pair (2i, 2i+1) of each axis segment by pos * freq[j], with the reference layout
    # using freq index j = (2i) % (d/2) for element 2i and (2i+1) % (d/2) for element 2i+1
    torch.manual_seed(0)
    B, nh, hs, grid = 2, 2, 32, (3, 2, 4)
    N = 24
    pos = torch.stack([torch.randperm(N)[:7] for _ in range(B)])
    x = torch.randn(B, nh, 7, hs)
    d = 2 * ((hs // 3) // 2)
    for layout in ("reference", "interleave"):
        cos, sin = model.rope_tables(pos, grid, hs, layout)
        fast = model.apply_rope(x, cos, sin)
        slow = x.clone()
        for b in range(B):
            for k in range(7):
                p = int(pos[b, k])
                coords = (p // 8, (p % 8) // 4, p % 4)
                for a in range(3):
                    for e in range(0, d, 2):
                        def freq(j):
                            i = j % (d // 2) if layout == "reference" else j // 2
                            return 1.0 / 10000 ** (i / (d / 2))
                        s = a * d + e
                        x0, x1 = x[b, :, k, s], x[b, :, k, s + 1]
                        th0, th1 = coords[a] * freq(e), coords[a] * freq(e + 1)
                        slow[b, :, k, s] = x0 * math.cos(th0) - x1 * math.sin(th0)
                        slow[b, :, k, s + 1] = x1 * math.cos(th1) + x0 * math.sin(th1)
        assert torch.allclose(fast, slow, atol=1e-5), (layout, (fast - slow).abs().max())
        assert torch.equal(fast[..., 3 * d:], x[..., 3 * d:])  # the rest is not rotated
    # the two layouts differ (the reference quirk is real) except for the first two frequencies
    c1, _ = model.rope_tables(pos, grid, hs, "reference")
    c2, _ = model.rope_tables(pos, grid, hs, "interleave")
    assert not torch.allclose(c1, c2)


def test_sdpa_matches_explicit_attention():
    torch.manual_seed(0)
    att = model.Attention(96, 3)
    x = torch.randn(2, 10, 96)
    rope = model.rope_tables(torch.arange(10)[None], (1, 2, 5), 32)
    mask = torch.ones(2, 1, 1, 10, dtype=torch.bool)
    mask[0, ..., 7:] = False
    for m in (None, mask):
        att.use_sdpa = True
        y1 = att(x, rope, m)
        att.use_sdpa = False
        y2 = att(x, rope, m)
        assert torch.allclose(y1, y2, atol=1e-5), (y1 - y2).abs().max()


def test_predictor_invariant_to_context_order():
    torch.manual_seed(0)
    enc, pred = Encoder(tiny_cfg()), build_predictor(tiny_cfg())
    for p in list(enc.parameters()) + list(pred.parameters()):
        torch.nn.init.normal_(p, std=0.3)  # large weights: attention far from uniform, positions matter
    x = torch.randn(2, 3, 4, 32, 64)
    grid, N = (2, 2, 4), 16
    perm = torch.stack([torch.randperm(N) for _ in range(2)])
    ctx, tgt = perm[:, :6], perm[:, 6:]
    with torch.no_grad():
        z = enc(x, ctx)
        p1 = pred(z, ctx, tgt, grid)
        sh = torch.randperm(6)
        p2 = pred(z[:, sh], ctx[:, sh], tgt, grid)
        # and the context tokens are position-aware: the same tokens at other positions change the output
        p3 = pred(z, ctx.flip(1), tgt, grid)
    assert torch.allclose(p1, p2, atol=1e-5)
    assert not torch.allclose(p1, p3, atol=1e-3)
    # masked encoding = gather of tokens, not zeroing: a kept token does not depend on dropped pixels' values
    x2 = x.clone()
    x2[:, :, :, :, 48:] += 5.0  # changes only the tokens of spatial column w = 3
    keep = torch.tensor([[0, 1, 2, 4, 5, 6]] * 2)  # no w = 3 token
    with torch.no_grad():
        assert torch.allclose(enc(x, keep), enc(x2, keep), atol=1e-5)


def test_ema_math():
    torch.manual_seed(0)
    a, b = Encoder(tiny_cfg(depth=1)), Encoder(tiny_cfg(depth=1))
    t1, t2 = Encoder(tiny_cfg(depth=1)), Encoder(tiny_cfg(depth=1))
    t2.load_state_dict(t1.state_dict())
    expect = {k: 0.9 * v + 0.1 * b.state_dict()[k] for k, v in t1.state_dict().items()}
    model.ema_update(t1, b, 0.9, fused=True)
    model.ema_update(t2, b, 0.9, fused=False)
    for k, v in t1.state_dict().items():
        assert torch.allclose(v, expect[k], atol=1e-6) and torch.allclose(v, t2.state_dict()[k], atol=1e-6), k
    model.ema_update(t1, a, 0.0)  # m = 0 copies the online weights
    assert all(torch.equal(v, a.state_dict()[k]) for k, v in t1.state_dict().items())


def test_probe_key_padding_and_slots():
    torch.manual_seed(0)
    probe = AttentiveProbe(32, 1, depth=2, heads=4, num_views=2, num_clips=2).eval()
    tok = torch.randn(1, 4 * 5, 32)  # 2 views x 2 clips = 4 slots of 5 tokens
    kpm = torch.zeros(1, 20, dtype=torch.bool)
    kpm[:, 10:] = True  # view 1 missing
    tok2 = tok.clone()
    tok2[:, 10:] = torch.randn(1, 10, 32) * 100
    with torch.no_grad():
        assert torch.allclose(probe(tok, kpm), probe(tok2, kpm), atol=1e-5)
        assert not torch.allclose(probe(tok), probe(tok2), atol=1e-3)


def test_probe_attention_weights_match_sdpa():
    # the explicit cross-attention behind probe.py --attn_maps equals the SDPA path; its weights are a distribution
    # over each item's tokens (sum 1 per head) with nothing on key-padded tokens
    torch.manual_seed(0)
    probe = AttentiveProbe(32, 3, depth=2, heads=4, num_views=2, num_clips=2).eval()
    for p in probe.parameters():
        torch.nn.init.normal_(p, std=0.3)  # far from uniform attention
    tok, kpm = torch.randn(3, 20, 32), torch.zeros(3, 20, dtype=torch.bool)
    kpm[0, 10:] = True  # item 0: view 1 missing
    with torch.no_grad(), one_thread():
        for m in (None, kpm):
            out, att = probe(tok, m, return_attn=True)
            assert att.shape == (3, 4, 1, 20) and torch.allclose(att.sum(-1), torch.ones(3, 4, 1), atol=1e-5)
            assert torch.allclose(out, probe(tok, m), atol=1e-5), (out - probe(tok, m)).abs().max()
    assert (att[0, ..., 10:] == 0).all() and att[0, ..., :10].std() > 0.01


# -----------------------------------------------------------------------------
# masks


def test_mask_invariants():
    for grid in [(8, 7, 7), (2, 4, 4), (8, 4, 6)]:
        T, H, W = grid
        N = T * H * W
        seen_ctx, seen_tgt = np.zeros((2, N), bool), np.zeros((2, N), bool)
        shapes = None
        for step in range(60):
            keys = list(range(step * 8, step * 8 + 8))
            out = masks.sample_masks(grid, keys, step, seed=3)
            s = [(c.shape, t.shape) for c, t in out]
            assert shapes is None or s == shapes, "mask shapes must be static for a geometry"
            shapes = s
            for g, (ctx, tgt) in enumerate(out):
                assert ctx.dtype == torch.long and ctx.min() >= 0 and tgt.max() < N
                for b in range(8):
                    c, t = set(ctx[b].tolist()), set(tgt[b].tolist())
                    assert len(c) == ctx.shape[1] and len(t) == tgt.shape[1], "duplicates"
                    assert not c & t, "context and target overlap"
                    # tubes: a spatial position is target at one time step only if it is never context
                    sc, st = {i % (H * W) for i in c}, {i % (H * W) for i in t}
                    assert not sc & st, "target blocks are not tubes over all T'"
                seen_ctx[g, ctx.flatten().numpy()] = True
                seen_tgt[g, tgt.flatten().numpy()] = True
        # every position can be predicted by both generators and seen as context by one of them; the long-range
        # blocks (>= 70 % of the frame) always cover the centre, so the centre is never long-range context,
        # exactly as in the reference rule
        assert seen_tgt.all() and seen_ctx.any(0).all() and seen_ctx[0].all(), f"unreachable positions on {grid}"
    # determinism and world-size independence: masks depend on (seed, step, key), not on batch layout
    a = masks.sample_masks((8, 7, 7), [16, 17, 18, 19], 2, seed=1)
    b = masks.sample_masks((8, 7, 7), [18, 19], 2, seed=1)
    assert torch.equal(a[0][0][2:], b[0][0]) and torch.equal(a[1][1][2:], b[1][1])


def test_mask_fractions_16x224():
    grid = (8, 14, 14)
    N = 8 * 14 * 14
    ctx_f, tgt_f = [[], []], [[], []]
    for step in range(3):
        for g, (ctx, tgt) in enumerate(masks.sample_masks(grid, list(range(step * 16, step * 16 + 16)), step)):
            ctx_f[g].append(ctx.shape[1] / N)
            tgt_f[g].append(tgt.shape[1] / N)
    spec = [(0.191, 0.429), (0.051, 0.699)]
    for g in range(2):
        assert abs(np.mean(ctx_f[g]) - spec[g][0]) <= 0.03 and abs(np.mean(tgt_f[g]) - spec[g][1]) <= 0.03
    assert masks.budgets(grid) == [(299, 673), (80, 1096)]


# -----------------------------------------------------------------------------
# pretrain.py pieces (executed from the script's own source) and runs


def pretrain_namespace(**cfg_kw):
    c = dict(warmup=10, steps=100, cooldown=20, lr=1e-3, start_lr=1e-4, final_lr=1e-5, ema=(0.99, 1.0),
             fused_ema=True, objective="jepa", reg_coeff=0.0)
    c.update(cfg_kw)
    return script_functions("pretrain.py", ["get_lr", "get_ema", "jepa_loss", "tubelets", "mae_loss", "train_step", "step_flops"],
                            cfg=types.SimpleNamespace(**c), torch=torch, F=F, ema_update=model.ema_update)


def test_schedules():
    ns = pretrain_namespace()
    lr, ema = ns["get_lr"], ns["get_ema"]
    assert lr(0) == 1e-4 and abs(lr(5) - 5.5e-4) < 1e-12 and lr(10) == 1e-3 and lr(79) == 1e-3
    assert lr(80) == 1e-3 and abs(lr(90) - (1e-3 + (1e-5 - 1e-3) * 0.5)) < 1e-12 and abs(lr(100) - 1e-5) < 1e-12
    assert ema(0) == 0.99 and abs(ema(50) - 0.995) < 1e-12 and ema(100) == 1.0
    ns = pretrain_namespace(cooldown=0)
    assert ns["get_lr"](99) == 1e-3  # no cooldown: constant after warmup (V-JEPA 2 / EchoJEPA main phase)


def _jepa_setup(seed=0):
    torch.manual_seed(seed)
    cfg = tiny_cfg()
    enc, pred = Encoder(cfg), build_predictor(cfg)
    import copy
    tgt_enc = copy.deepcopy(enc).requires_grad_(False)
    params = list(enc.parameters()) + list(pred.parameters())
    opt = torch.optim.AdamW([dict(params=[p for p in params if p.ndim >= 2], weight_decay=0.04),
                             dict(params=[p for p in params if p.ndim < 2], weight_decay=0.0)], lr=1e-3)
    grid = (2, 4, 4)
    ns = pretrain_namespace(lr=1e-3, start_lr=1e-3, warmup=0, cooldown=0, ema=(0.99, 0.99))
    ns.update(target_encoder=tgt_enc, encoder=enc, predictor=pred, raw_encoder=enc, grid=grid, opt=opt,
              autocast=torch.autocast("cpu", enabled=False), scaler=torch.amp.GradScaler("cpu", enabled=False))
    # smooth clips (a coarse random pattern, upsampled, static in time): hidden tubes are predictable from context,
    # unlike i.i.d. pixel noise
    coarse = torch.randn(4, 3, 1, 3, 3)
    clips = F.interpolate(coarse, size=(4, 64, 64), mode="trilinear", align_corners=True)
    mk = masks.sample_masks(grid, [0, 1, 2, 3], 0)
    return ns, clips, mk


def test_train_steps_lower_loss():
    ns, clips, mk = _jepa_setup()
    losses = [ns["train_step"](clips, mk, i)[0].item() for i in range(30)]
    assert losses[-1] < 0.85 * losses[0], losses
    # the target encoder moved by EMA and is not the online encoder
    assert not torch.equal(ns["target_encoder"].norm.weight, ns["encoder"].norm.weight)


def test_mae_baseline_steps_lower_loss():
    """--objective mae: same encoder, 90 % tube mask, the predictor as pixel decoder, MSE on normalised pixels."""
    ns, clips, _ = _jepa_setup()
    ns["cfg"].objective = "mae"
    ns["predictor"] = build_predictor(tiny_cfg(), out_dim=3 * 2 * 16 * 16)
    params = list(ns["encoder"].parameters()) + list(ns["predictor"].parameters())
    ns["opt"] = torch.optim.AdamW(params, lr=1e-3)
    mk = masks.sample_tube_mask((2, 4, 4), [0, 1, 2, 3])
    assert mk[0][0].shape == (4, 2 * 2) and mk[0][1].shape == (4, 2 * 14)  # round(10 % of 16) = 2 visible tubes
    target_before = ns["target_encoder"].state_dict()["norm.weight"].clone()
    losses = [ns["train_step"](clips, mk, i)[0].item() for i in range(30)]
    assert losses[-1] < 0.85 * losses[0], losses
    assert torch.equal(ns["target_encoder"].state_dict()["norm.weight"], target_before)  # no EMA in MAE mode


def test_mae_checkpoint_runs_in_probe():
    """Issue 8: --objective mae writes the same checkpoint format, so probe.py probes its encoder unchanged."""
    with tempfile.TemporaryDirectory() as d:
        rc, out, err = run_script("pretrain.py", [*TINY_RUN, "--objective", "mae", "--steps", "2", "--out_dir", d])
        assert rc == 0, err
        assert torch.load(os.path.join(d, "ckpt.pt"), weights_only=False)["config"]["objective"] == "mae"
        args = [a for a in PROBE_TINY if a != "--random_init"]
        rc, out, err = run_script("probe.py", [*args, "--ckpt", os.path.join(d, "ckpt.pt"), "--out_dir",
                                               os.path.join(d, "probe")])
        assert rc == 0, err[-2000:]
        m = json.load(open(os.path.join(d, "probe", "metrics.json")))
        assert m["encoder"].startswith(os.path.join(d, "ckpt.pt")) and 0 <= m["test"]["accuracy"] <= 1


def test_fast_path_fallbacks_agree():
    """Each speed flag against its fallback: fused vs loop AdamW, activation checkpointing vs plain backward,
    bf16 autocast vs fp32 (the SDPA and fused-EMA fallbacks have their own tests above)."""
    ns, clips, mk = _jepa_setup()
    enc, pred = ns["encoder"], ns["predictor"]
    loss, _ = ns["jepa_loss"](clips, mk)
    loss.backward()
    g_plain = [p.grad.clone() for p in enc.parameters()]
    enc.zero_grad(), pred.zero_grad()
    enc.grad_checkpointing = pred.grad_checkpointing = True
    loss2, _ = ns["jepa_loss"](clips, mk)
    loss2.backward()
    assert torch.equal(loss, loss2)
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(g_plain, enc.parameters()))
    with torch.no_grad():
        ref = enc(clips[:1], mk[0][0][:1])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = enc(clips[:1], mk[0][0][:1])
    assert low.dtype == torch.bfloat16 and (low.float() - ref).abs().mean() < 0.05 * ref.abs().mean()
    ps = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(2)]
    for p in ps:
        p.grad = torch.ones_like(p)
    outs = []
    for fused in (True, False):
        q = [torch.nn.Parameter(p.detach().clone()) for p in ps]
        for a, b in zip(q, ps):
            a.grad = b.grad.clone()
        opt = torch.optim.AdamW(q, lr=1e-2, weight_decay=0.04, fused=fused or None)
        for _ in range(3):
            opt.step()
        outs.append(q)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*outs))


def test_flop_formula_matches_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode
    ns, clips, mk = _jepa_setup()
    for m in (ns["encoder"], ns["predictor"], ns["target_encoder"]):
        for a in m.modules():
            if isinstance(a, model.Attention):
                a.use_sdpa = False  # explicit matmuls, so the counter sees attention too
    with FlopCounterMode(display=False) as fc:
        loss, _ = ns["jepa_loss"](clips, mk)
        loss.backward()
    mm, att = ns["step_flops"](tiny_cfg(), (2, 4, 4), [(c.shape[1], t.shape[1]) for c, t in mk])
    counted = fc.get_total_flops() / clips.shape[0]
    assert abs(counted - (mm + att)) / counted < 0.005, (counted, mm, att)



TINY_RUN = ["--crop", "64", "--frames", "4", "--batch_size", "2", "--num_workers", "0", "--log_interval", "1",
            "--eval_interval", "0"]  # the read-out has its own test


def run_script(path, args, signal_at=None):
    """Run a script in this process (torch is already imported: ~2 s cheaper than a subprocess).
    signal_at: send this process a real SIGTERM once the script has printed that text (the script's own handler,
    installed while it runs, takes it). Returns (exit code, stdout, stderr)."""
    import contextlib
    import io
    import signal
    import threading
    out, err, code = io.StringIO(), io.StringIO(), 0
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    argv = sys.argv
    sys.argv = [path, *args]
    done = threading.Event()

    def watch():
        while not done.wait(0.01):
            if signal_at in out.getvalue():
                os.kill(os.getpid(), signal.SIGTERM)
                return
    if signal_at:
        threading.Thread(target=watch, daemon=True).start()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            run_main(path)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
            err.write(e.code)
    finally:
        done.set()
        sys.argv = argv
        for s, h in handlers.items():
            signal.signal(s, h)
    return code, out.getvalue(), err.getvalue()


def fork(fn):
    """Run fn() in a forked copy of this process (torch already imported: no ~2.5 s re-import) and return the
    child's pid; the child exits with fn's return value (1 if it raises) and never returns into the runner."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = fn() or 0
        finally:
            os._exit(code)
    return pid


def logged_losses(folder):
    return {int(line.split()[1]): line.split("| loss ")[1].split()[0]
            for line in open(os.path.join(folder, "log.txt")) if line.startswith("step")}


def test_pretrain_run_and_checkpoint_roundtrip():
    with tempfile.TemporaryDirectory() as d:
        rc, out, err = run_script("pretrain.py", [*TINY_RUN, "--steps", "4", "--ckpt_interval", "2", "--keep_ckpts",
                                                  "--out_dir", d])
        assert rc == 0, err
        ck = torch.load(os.path.join(d, "ckpt.pt"), weights_only=False)
        kept = [torch.load(os.path.join(d, f"ckpt_00000{i}.pt"), weights_only=False) for i in (2, 4)]  # --keep_ckpts
        assert kept[0]["step"] == 2 and kept[1]["step"] == 4 and sorted(os.listdir(d)).count("ckpt_000002.pt") == 1
        assert all(torch.equal(v, kept[1]["encoder"][k]) for k, v in ck["encoder"].items())
        assert not all(torch.equal(v, kept[0]["encoder"][k]) for k, v in ck["encoder"].items())  # step 2 kept as is
        assert {"encoder", "predictor", "target_encoder", "opt", "epoch", "itr", "step", "loss", "batch_size",
                "world_size", "lr", "config"} <= set(ck)
        assert ck["step"] == 4 and ck["config"]["model"] == "vitq" and ck["world_size"] == 1
        for key in ("encoder", "predictor", "target_encoder"):
            assert not any(k.startswith(("module.", "_orig_mod.", "backbone.")) for k in ck[key]), key
        enc, pred = Encoder(CONFIGS["vitq"]), build_predictor(CONFIGS["vitq"])
        enc.load_state_dict(ck["target_encoder"], strict=True)
        pred.load_state_dict(ck["predictor"], strict=True)
        log = open(os.path.join(d, "log.txt")).read()
        assert "step      2 | loss" in log and "step      4 | loss" in log and "clips/s" in log and "std tgt" in log
        # --init accepts an official-style file: module.backbone. prefixes, encoder / predictor / target_encoder
        official = {k: {f"module.backbone.{n}": v for n, v in ck[k].items()}
                    for k in ("encoder", "predictor", "target_encoder")}
        torch.save(official, os.path.join(d, "official.pt"))
        rc, out, err = run_script("pretrain.py", [*TINY_RUN, "--steps", "1", "--out_dir", os.path.join(d, "b"),
                                                  "--init", os.path.join(d, "official.pt")])
        assert rc == 0, err
        # bad input: one clear line on stderr (argparse adds its usage above), never a traceback
        with open(os.path.join(d, "garbage.pt"), "wb") as f:
            f.write(b"not a checkpoint" * 10)
        open(os.path.join(d, "afile"), "w").close()
        open(os.path.join(d, "empty.csv"), "w").close()  # an empty split
        cases = [(["--model", "vitx"], "invalid choice"), (["--crop", "100"], "multiple of the 16"),
                 (["--frames", "15"], "must be even"), (["--init", os.path.join(d, "nope.pt")], "no such file"),
                 (["--init", os.path.join(d, "official.pt"), "--model", "vitt"], "shape mismatches"),
                 (["--init", os.path.join(d, "garbage.pt")], "cannot read"),
                 (["--crop", "32", "--frames", "2"], "cannot fit"),
                 (["--out_dir", os.path.join(d, "afile", "sub")], "not writable"),
                 (["--resume", "--out_dir", os.path.join(d, "empty")], "no checkpoint"),
                 (["--data", os.path.join(d, "nope.csv")], "nope.csv"),
                 (["--data", os.path.join(d, "empty.csv")], "no rows")]
        for args, want in cases:
            rc, out, err = run_script("pretrain.py", [*TINY_RUN, "--steps", "1", "--out_dir", os.path.join(d, "c"),
                                                      *args])
            last = err.strip().splitlines()[-1]
            assert rc != 0 and want in last and "error" in last and "Traceback" not in err, (want, err[-500:])


def test_preemption_and_exact_resume():
    """SIGTERM mid-run: the run saves at the next step boundary and exits 0; --resume then continues bit for bit
    like an uninterrupted run (data, masks and schedules are pure functions of the step)."""
    import signal
    with tempfile.TemporaryDirectory() as d:
        a, b = os.path.join(d, "a"), os.path.join(d, "b")
        args = [*TINY_RUN, "--steps", "8", "--ckpt_interval", "100"]
        rc, out, err = run_script("pretrain.py", [*args, "--out_dir", a], signal_at="step      2")
        assert rc == 0 and "received signal 15" in out, (out, err[-1000:])
        k = torch.load(os.path.join(a, "ckpt.pt"), weights_only=False)["step"]
        assert 2 <= k < 8, k
        rc, out, err = run_script("pretrain.py", [*args, "--out_dir", a, "--resume"])
        assert rc == 0 and f"resumed from {a}" in out, err
        rc, out, err = run_script("pretrain.py", [*args, "--out_dir", b])  # uninterrupted reference
        assert rc == 0, err
        la, lb = logged_losses(a), logged_losses(b)
        assert all(la[s] == lb[s] for s in range(k + 1, 9)), (la, lb)
        ca, cb = (torch.load(os.path.join(x, "ckpt.pt"), weights_only=False) for x in (a, b))
        for key in ("encoder", "predictor", "target_encoder"):
            assert all(torch.equal(v, cb[key][n]) for n, v in ca[key].items()), key
        # a corrupt checkpoint: one clear error naming the file
        with open(os.path.join(a, "ckpt.pt"), "r+b") as f:
            f.truncate(1000)
        rc, out, err = run_script("pretrain.py", [*args, "--out_dir", a, "--resume"])
        assert rc == 1 and "ckpt.pt is corrupt or truncated" in err and "Traceback" not in err, err
        # NaN: resume a good run with an absurd learning rate; the run stops naming the step, the checkpoint stays
        good = torch.load(os.path.join(b, "ckpt.pt"), weights_only=False)
        rc, out, err = run_script("pretrain.py", [*TINY_RUN, "--steps", "12", "--out_dir", b, "--resume",
                                                  "--lr", "1e30", "--start_lr", "1e30"])
        assert rc == 1 and "NaN/inf" in err and "step" in err, err[-500:]
        kept = torch.load(os.path.join(b, "ckpt.pt"), weights_only=False)
        assert kept["step"] == good["step"] and torch.equal(kept["encoder"]["norm.weight"], good["encoder"]["norm.weight"])


def test_checkpoint_survives_kill_mid_save():
    """save_checkpoint writes a temp file and os.replace()s it: killing the writer never leaves a torn ckpt.pt."""
    import signal
    with tempfile.TemporaryDirectory() as d:
        big = {"w": torch.randn(20_000_000)}  # 80 MB: each save takes long enough to be killed inside
        ns = script_functions("pretrain.py", ["save_checkpoint"], torch=torch, os=os, ckpt_path=os.path.join(d, "ckpt.pt"),
                              raw_encoder=torch.nn.Linear(2, 2), raw_predictor=torch.nn.Linear(2, 2),
                              target_encoder=torch.nn.Linear(2, 2), opt=types.SimpleNamespace(state_dict=lambda: big),
                              cfg=types.SimpleNamespace(compile=False, batch_size=1, keep_ckpts=False), global_batch=1,
                              dataset=[0], world_size=1, mae=False, get_lr=lambda it: 0.0, asdict=lambda c: {},
                              fail=print)
        r, w = os.pipe()

        def writer():
            os.close(r)
            for i in range(1000):
                ns["save_checkpoint"](i, 0.0)
                os.write(w, b"x")  # one byte per finished save
        pid = fork(writer)  # killed mid-save below
        os.close(w)
        assert os.read(r, 1) and os.read(r, 1) and os.read(r, 1)  # 3 saves done
        time.sleep(0.05)  # somewhere inside the next save
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
        ck = torch.load(os.path.join(d, "ckpt.pt"), weights_only=False)
        assert ck["step"] >= 2 and ck["opt"]["w"].shape == (20_000_000,)


def test_ddp_equivalence_gloo():
    """2 processes x batch 1 (gloo) == 1 process x batch 2: same data, masks, loss and updated weights."""
    with tempfile.TemporaryDirectory() as d:
        common = ["--crop", "64", "--frames", "4", "--num_workers", "0", "--log_interval", "1", "--steps", "2",
                  "--eval_interval", "0"]
        # the two ranks: forked copies of this process (torch already imported, ~2.5 s each saved), each with the
        # environment torchrun gives a rank (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_*) and one thread, as a DataLoader
        # worker; pretrain.py runs in them as __main__, as under `torchrun --nproc_per_node=2 pretrain.py`
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]

        def rank(r):
            torch.set_num_threads(1)
            os.environ.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                              MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            code, out, err = run_script("pretrain.py", [*common, "--batch_size", "1", "--out_dir", os.path.join(d, "ddp")])
            with open(os.path.join(d, f"rank{r}.err"), "w") as f:
                f.write("\n".join(l for l in err.splitlines() if "it/s" not in l))  # no tqdm bars
            return code
        pids = [fork(lambda r=r: rank(r)) for r in range(2)]
        for r, pid in enumerate(pids):  # not concurrently with anything else: 2 cores, oversubscribed threads crawl
            status = os.waitpid(pid, 0)[1]
            assert os.waitstatus_to_exitcode(status) == 0, open(os.path.join(d, f"rank{r}.err")).read()[-6000:]
        rc, out, err = run_script("pretrain.py", [*common, "--batch_size", "2", "--out_dir", os.path.join(d, "one")])
        assert rc == 0, err
        c1, c2 = (torch.load(os.path.join(d, x, "ckpt.pt"), weights_only=False) for x in ("one", "ddp"))
        assert c2["world_size"] == 2 and c2["step"] == 2
        l1, l2 = logged_losses(os.path.join(d, "one")), logged_losses(os.path.join(d, "ddp"))
        assert all(abs(float(l1[s]) - float(l2[s])) < 1e-5 for s in (1, 2)), (l1, l2)
        for key in ("encoder", "predictor", "target_encoder"):
            diff = max((v - c2[key][n]).abs().max().item() for n, v in c1[key].items())
            assert diff < 1e-5, (key, diff)


# -----------------------------------------------------------------------------
# corrupt.py

import contextlib
import hashlib
import io

import corrupt


def test_corrupt_depth_attenuation_bottom_centre():
    # bottom-centre pixel: x = (W-1)/2 (a pixel for odd W), y = H-1, so d = 1 and A = exp(-gamma)
    got = [corrupt.corruption_map("da", lv, 112, 113, np.random.default_rng(0))[-1, 56] for lv in corrupt.LEVELS]
    for g, want, a in zip(corrupt.DA_GAMMA, (0.47, 0.22, 0.12), got):
        assert abs(a - want) <= 0.01 and abs(a - math.exp(-g)) < 1e-6, (want, a)
    m = corrupt.corruption_map("da", "high", 112, 113, None)
    assert m[0, 56] == 1 and (np.diff(m[:, 56]) < 0).all()  # no loss at the probe, monotone fall with depth


def test_corrupt_gaussian_shadow_minimum_at_centre():
    for level, (s, _) in zip(corrupt.LEVELS, corrupt.GS_PRESET):
        for vid in ("0X1", "0X2", "0X3"):
            m = corrupt.corruption_map("gs", level, 112, 96, corrupt.video_rng(0, vid))
            r = corrupt.video_rng(0, vid)  # the same draws: the centre (mu_x, mu_y) in whole pixels
            mx, my = int(r.uniform(0.2, 0.8) * 96), int(r.uniform(0.2, 0.8) * 112)
            assert abs(m[my, mx] - (1 - s)) < 1e-6 and abs(m.min() - (1 - s)) < 1e-6 and m.max() <= 1


def test_corrupt_maps_static_across_frames_and_ordered_by_severity():
    ones = np.ones((4, 48, 64), np.float32)
    for kind in corrupt.KINDS:
        dev = []
        for level in corrupt.LEVELS:
            out = corrupt.corrupt_video(ones, kind, level, seed=1, video_id="v")
            assert out.shape == ones.shape and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
            assert all(np.array_equal(out[0], f) for f in out[1:]), (kind, level)
            m = corrupt.corruption_map(kind, level, 48, 64, corrupt.video_rng(1, "v"))
            assert np.array_equal(out[0], np.clip(m, 0, 1)) and np.isfinite(m).all() and (m >= 0).all()
            dev.append(np.abs(m - 1).mean())
        assert dev[0] < dev[1] < dev[2], (kind, dev)
    x = torch.rand(3, 2, 48, 64)  # torch in, torch out; any leading dims
    y = corrupt.corrupt_video(x, "rib", "high", 5, "v")
    assert isinstance(y, torch.Tensor) and torch.equal(y, torch.from_numpy(corrupt.corrupt_video(x.numpy(), "rib", "high", 5, "v")))


def test_corrupt_maps_reproducible_across_processes():
    code = ("import hashlib, corrupt; print(*[hashlib.sha256(corrupt.corruption_map(k, 'med', 112, 112, "
            "corrupt.video_rng(3, '0X1A2B3C4D')).tobytes()).hexdigest() for k in corrupt.KINDS])")
    here = [hashlib.sha256(corrupt.corruption_map(k, "med", 112, 112, corrupt.video_rng(3, "0X1A2B3C4D")).tobytes())
            .hexdigest() for k in corrupt.KINDS]
    rc, out, err = run(["-c", code], env={"PYTHONHASHSEED": "12345"})  # a salted hash() would differ here
    assert rc == 0 and out.split() == here, err
    a, b = (corrupt.corruption_map("gs", "med", 112, 112, corrupt.video_rng(3, v)) for v in ("0X1A2B3C4D", "0X1A2B3C4E"))
    assert not np.allclose(a, b)


def test_corrupt_unknown_kind_or_level_errors():
    for args, words in ((("blur", "low"), ["blur", *corrupt.KINDS]), (("da", "extreme"), ["extreme", *corrupt.LEVELS])):
        for fn in (lambda: corrupt.corrupt_video(np.ones((1, 8, 8), np.float32), *args),
                   lambda: corrupt.corruption_map(*args, 8, 8, np.random.default_rng(0))):
            try:
                fn()
                assert False, "no error"
            except ValueError as e:
                assert all(w in str(e) for w in words), str(e)
    try:
        corrupt.corrupt_video(np.ones((1, 8, 8), np.uint8), "da", "low")
        assert False, "uint8 accepted"
    except ValueError as e:
        assert "float" in str(e)


def corrupt_cli(*argv):
    """corrupt.main in-process (a subprocess would spend seconds importing torch): (exit code, stdout, stderr)."""
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            corrupt.main(list(argv))
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def test_corrupt_cli_writes_test_split_that_reads_back():
    import data
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "echonet"), os.path.join(d, "echonet_da")
        os.makedirs(os.path.join(src, "Videos"))
        ramp = np.linspace(60, 220, 48)[None, None, :] * np.ones((5, 32, 1))  # smooth: MJPEG keeps it within ~1
        rows = []
        for i, split in enumerate(["TRAIN", "TEST", "VAL", "TEST"]):
            data.write_video(os.path.join(src, "Videos", f"0X{i}.avi"), (ramp + 5 * i).astype(np.uint8), 50, "ffv1")
            rows.append(f"0X{i},{50 + i},30,60,32,48,50,5,{split}")
        with open(os.path.join(src, "FileList.csv"), "w") as f:
            f.write("FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split\n" + "\n".join(rows) + "\n")
        code, out, err = corrupt_cli("--data", src, "--kind", "da", "--level", "high", "--out", dst, "--seed", "7")
        assert code == 0 and "wrote 2" in out, err
        got = data.read_echonet(dst, "test")
        assert [r[2] for r in got] == ["0X1", "0X3"] and [r[1] for r in got] == [51.0, 53.0]
        assert open(os.path.join(dst, "FileList.csv")).readline().startswith("FileName,EF,ESV,EDV")
        video, fps = data.read_video(got[1][0][0])
        want = corrupt.corrupt_video(data.read_video(os.path.join(src, "Videos", "0X3.avi"))[0] / 255, "da", "high", 7, "0X3")
        assert video.shape == (5, 32, 48) and fps == 50 and np.abs(video - want * 255).mean() < 2
        with open(os.path.join(src, "FileList.csv"), "w") as f:  # no TEST rows: one clear line, no traceback
            f.write("FileName,EF,Split\n0X0,50,TRAIN\n")
        code, out, err = corrupt_cli("--data", src, "--kind", "gs", "--level", "low", "--out", os.path.join(d, "x"))
        assert code == 1 and err.strip().startswith("error:") and "'test'" in err and len(err.strip().splitlines()) == 1, err
        code, out, err = corrupt_cli("--data", os.path.join(d, "nowhere"), "--kind", "gs", "--level", "low", "--out", dst)
        assert code == 1 and "FileList.csv" in err and "Traceback" not in err, err


def test_corrupt_preview_png_decodes():
    import av
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "preview.png")
        code, out, err = corrupt_cli("--preview", "--out", path)
        assert code == 0 and f"({4 * 112}x{len(corrupt.KINDS) * 112})" in out, (out, err)
        with av.open(path) as c:
            img = next(c.decode(video=0)).to_ndarray(format="gray")
        assert img.shape == (len(corrupt.KINDS) * 112, 4 * 112)  # rows = kinds, columns = clean + 3 levels
        assert img[:112, 112:].astype(int).sum() < 3 * img[:112, :112].astype(int).sum()  # DA only darkens


# -----------------------------------------------------------------------------
# data.py

import av  # noqa: E402  (imported next to the data tests, so each section of this file stands alone)
import data  # noqa: E402


def test_data_synth_realism():
    # EchoNet-like intensities (NOTES-data §1.10) at 112x112 A4C, and Rayleigh speckle before log compression
    means, inside, frac = [], [], []
    for i in range(8):
        video, labels = data.synth_video(0, i, "A4C", frames=8, fps=12.5)
        sector = data.synth_video(0, i, "A4C", frames=1, envelope=True)[0][0] > 0  # zero only outside the fan
        assert video.shape == (8, 112, 112) and video.dtype == np.uint8 and labels["view"] == "A4C"
        means.append(video.mean()); inside.append(video[:, sector].mean()); frac.append(sector.mean())
    print(f"    frame mean {np.mean(means):.1f}, in-sector mean {np.mean(inside):.1f}, sector {np.mean(frac):.3f}")
    assert 24 <= np.mean(means) <= 46 and 40 <= np.mean(inside) <= 70 and 0.55 <= np.mean(frac) <= 0.65
    # a patch of the LV blood pool in A2C (homogeneous backscatter); frames 0.2 s apart decorrelate the speckle
    env = [data.synth_video(0, i, "A2C", frames=12, fps=5, envelope=True)[0][:, 40:50, 55:63] for i in range(10)]
    x = np.concatenate([(e / e.mean()).ravel() for e in env])
    print(f"    envelope mean/std {x.mean() / x.std():.3f} (Rayleigh 1.913)")
    assert all((e > 0).all() for e in env) and abs(x.mean() / x.std() - 1.913) < 0.15


def test_data_synth_ef():
    # EF measured on the rendered pixels at the ED and ES frames, area-length V = 8A^2/(3 pi L): the dark LV cavity
    # is the 3x3 mean below the midpoint between the blood inside the traced outline and the wall just outside it
    # (speckle and gain vary per clip), flood-filled from the long-axis midpoint, on the apex side of the mitral
    # annulus line (the valve is a thin leaflet) and within 2 px of the traced outline (a wall dropping out cannot
    # leak it into the next chamber), opened to cut speckle spurs, holes filled. L is the std of the cavity's pixels
    # along the axis: ED and ES cavities are similar shapes, so it scales with the length, without the pixel noise
    # of the apex tip. The tracings must trace that cavity (Dice) and give the EF by the disc method.
    F = torch.nn.functional
    grow = lambda m, k=3: F.max_pool2d(m[None, None].float(), k, 1, k // 2)[0, 0] > 0
    def fill(seed, allowed):  # 8-connected flood fill, fast: each step takes whole runs along rows, then columns
        allowed = allowed.numpy()
        for _ in range(100):
            before = seed
            for a in (allowed, allowed.T):
                s = grow(seed if a is allowed else seed.T).numpy() & a  # one 8-connected step, then whole runs
                ids = np.cumsum(a & ~np.pad(a, ((0, 0), (1, 0)))[:, :-1]).reshape(a.shape) * a  # run ids, 0 = wall
                hit = np.zeros(ids.max() + 1, bool)
                hit[ids[s]] = True
                hit[0] = False
                seed = torch.tensor(hit[ids] if a is allowed else hit[ids].T)
            if torch.equal(seed, before):
                return seed
        return seed
    yy, xx = np.mgrid[0:112, 0:112]
    errors, disc_errors, dice = [], [], []
    for i in range(12):
        labels = data.synth_video(0, i, "A4C", frame_idx=[0])[1]  # labels only (renders one frame)
        ed, es = labels["ed_frame"], labels["es_frame"]
        video, _ = data.synth_video(0, i, "A4C", frame_idx=[ed, es])
        sector = torch.tensor(data.synth_video(0, i, "A4C", frame_idx=[ed, es], envelope=True)[0] > 0)
        tracings = np.array(labels["tracings"], float)  # (42, 5): per frame the long axis, then 20 chords
        area_length, discs = [], []
        for k, frame in enumerate((ed, es)):
            rows = tracings[tracings[:, 4] == frame]
            x1, y1, x2, y2 = rows[0, :4]
            length = np.hypot(x2 - x1, y2 - y1)
            discs.append(sum(np.pi * (np.hypot(r[2] - r[0], r[3] - r[1]) / 2) ** 2 * length / 20 for r in rows[1:]))
            outline = np.concatenate([rows[1:, :2], rows[:0:-1, 2:4]])  # the traced polygon, (40, 2)
            traced = np.zeros((112, 112), bool)
            for (xa, ya), (xb, yb) in zip(outline, np.roll(outline, 1, 0)):  # even-odd rule
                traced ^= ((ya > yy) != (yb > yy)) & (xx < (xb - xa) * (yy - ya) / (yb - ya + 1e-12) + xa)
            traced = torch.tensor(traced)
            m = F.avg_pool2d(torch.tensor(video[k], dtype=torch.float32)[None, None], 3, 1, 1,
                             count_include_pad=False)[0, 0]
            blood, wall = m[~grow(~traced, 7)].median(), m[grow(traced, 11) & ~grow(traced, 5) & sector[k]].median()
            dark = (m < (blood + wall) / 2) & ~grow(~sector[k], 5) & grow(traced, 5)
            dark &= torch.tensor((xx - x1) * (x2 - x1) + (yy - y1) * (y2 - y1) <= length * (length + 0.5))
            seed = torch.zeros_like(dark)
            seed[round((y1 + y2) / 2), round((x1 + x2) / 2)] = True
            cavity = fill(seed, grow(~grow(~fill(seed, dark))))  # opening
            top = torch.zeros_like(cavity)
            top[0] = True
            cavity = ~fill(top & ~cavity, ~cavity)  # holes filled
            dice.append(2 * (cavity & traced).sum().item() / (cavity.sum() + traced.sum()).item())
            cy, cx = np.nonzero(cavity.numpy())
            along = (cx * (x2 - x1) + cy * (y2 - y1)) / length
            area_length.append(len(cx) ** 2 / along.std())  # proportional to 8 A^2 / (3 pi L)
        errors.append(100 * (1 - area_length[1] / area_length[0]) - labels["EF"])
        disc_errors.append(100 * (1 - discs[1] / discs[0]) - labels["EF"])
    print(f"    EF error from pixels: MAE {np.mean(np.abs(errors)):.2f}, max {np.max(np.abs(errors)):.2f}; "
          f"from tracings: max {np.max(np.abs(disc_errors)):.2f}; Dice(cavity, traced) min {min(dice):.3f}")
    assert np.mean(np.abs(errors)) < 1.5 and np.max(np.abs(errors)) < 3 and np.max(np.abs(disc_errors)) < 1
    assert min(dice) > 0.9


def test_data_synth_valves_and_blood():
    # the mitral valve is shut at ED and ES and open in early diastole, the aortic valve open in ejection only; in
    # the pixels, the point where the closed leaflets meet (just atrial of the annulus centre, the traced base) is
    # bright at ES and dark blood when open, and the LV blood pool is much darker than the wall around it
    phase = np.linspace(0, 1, 400, endpoint=False)
    s, inflow, outflow = data.cardiac_cycle(phase, 0.37)
    assert s[0] == 0 and abs(s.max() - 1) < 1e-3 and inflow.max() == 1 and outflow.max() == 1
    assert inflow[(phase < 0.39) | (phase > 0.95)].max() == 0 and inflow[(phase > 0.47) & (phase < 0.6)].min() == 1
    assert outflow[phase > 0.36].max() == 0
    for i in range(4):
        labels = data.synth_video(0, i, "A4C", frame_idx=[0])[1]
        es, rr = labels["es_frame"], 50 * 60 / labels["hr"]
        video = data.synth_video(0, i, "A4C", frame_idx=[es, es + round(0.15 * rr)])[0].astype(float)
        rows = np.array(labels["tracings"], float)
        rows = rows[rows[:, 4] == es]
        x1, y1, x2, y2 = rows[0, :4]
        ux, uy = (x2 - x1) / np.hypot(x2 - x1, y2 - y1), (y2 - y1) / np.hypot(x2 - x1, y2 - y1)
        xi, yi = round(x2 + 2 * ux), round(y2 + 2 * uy)  # 2 px past the annulus centre, towards the atrium
        valve = video[:, yi - 1:yi + 2, xi - 1:xi + 2].mean((1, 2))  # (closed at ES, open)
        (xa, ya, xb, yb), t = rows[11, :4], np.linspace(0.25, 0.75, 9)  # the chord across the cavity's middle
        ex, ey = (xb - xa) / np.hypot(xb - xa, yb - ya), (yb - ya) / np.hypot(xb - xa, yb - ya)
        blood = np.median([video[0, round(ya + (yb - ya) * f), round(xa + (xb - xa) * f)] for f in t])
        wall = np.median([video[0, round(y + sign * k * ey), round(x + sign * k * ex)] for k in (2, 3, 4, 5)
                          for x, y, sign in ((xa, ya, -1), (xb, yb, 1))])  # 2-5 px beyond the chord's ends
        print(f"    clip {i}: valve closed {valve[0]:.0f} / open {valve[1]:.0f}, blood {blood:.0f} / wall {wall:.0f}")
        assert valve[0] > 35 and valve[0] > 2 * valve[1] and blood < 0.25 * wall


def test_data_views_not_trivial():
    # nearest-centroid on 8x8 mean frames: views differ in anatomy, but not trivially
    def features(base, n):
        X, y = [], []
        for i in range(n):
            for v, view in enumerate(data.VIEWS):
                video, _ = data.synth_video(0, base + i, view, frames=6, fps=10)
                X.append(video.mean(0).reshape(8, 14, 8, 14).mean((1, 3)).ravel())  # (64,)
                y.append(v)
        return np.array(X), np.array(y)
    X, y = features(0, 16)
    Xt, yt = features(10**6, 8)
    centroids = np.stack([X[y == v].mean(0) for v in range(len(data.VIEWS))])
    acc = (((Xt[:, None] - centroids[None]) ** 2).sum(-1).argmin(1) == yt).mean()
    print(f"    nearest-centroid view accuracy {acc:.2f} (chance {1 / len(data.VIEWS):.2f})")
    assert 1 / len(data.VIEWS) + 0.15 < acc < 0.9


def test_data_clips_and_transforms():
    idx = data.clip_indices(100, 29.97, 16, 8)  # step = ceil(29.97) // 8 = 3, centre clip
    assert idx.shape == (1, 16) and (np.diff(idx) == 3).all() and idx[0, 0] == (100 - 48) // 2
    assert (data.clip_indices(20, 50, 16, 8, num_clips=2)[:, -1] == 19).all()  # short video: last frame repeats
    assert (data.clip_indices(1, 30, 16, 8) == 0).all()  # a still repeats
    rng = np.random.default_rng(0)
    assert (data.clip_indices(200, 50, 16, 8, 1, rng) <= 199).all()
    video = np.full((4, 90, 120), 128, np.uint8)
    x = data.pretrain_transform(video, 64, np.random.default_rng(0))
    expected = (128 / 255 - torch.tensor(data.IMAGENET_MEAN)) / torch.tensor(data.IMAGENET_STD)
    assert x.shape == (3, 4, 64, 64) and torch.allclose(x[:, 0, 5, 5], expected, atol=1e-4)
    assert data.eval_transform(video, 64).shape == (3, 4, 64, 64)
    y, ns = np.array([40.0, 60.0, 50.0]), script_functions("probe.py", ["zscore", "zscore_stats"], np=np)
    zscore, stats = ns["zscore"], ns["zscore_stats"](y)
    assert abs(zscore(y, stats).mean()) < 1e-9 and np.allclose(zscore(zscore(y, stats), stats, True), y)


def test_data_datasets_synthetic():
    pre = data.build_pretrain_dataset("synthetic", 8, 64, 8, 0)
    x = pre[123_456_789]  # any key
    assert x.shape == (3, 8, 64, 64) and x.dtype == torch.float32 and torch.equal(x, pre[123_456_789])
    assert not torch.equal(x, pre[1])
    kw = dict(frames=8, crop=64, fps=8, seed=0, n_train=12, n_val=6, n_test=6)
    view = data.build_probe_dataset("synthetic", "view", "train", **kw)
    item = view[7]
    assert item["clips"].shape == (2, 3, 8, 64, 64) and item["label"] == 1 and view.num_classes == len(data.VIEWS)
    assert view.labels[:len(data.VIEWS)] == list(range(len(data.VIEWS)))
    lvef = {s: data.build_probe_dataset("synthetic", "lvef", s, **kw) for s in ("train", "val", "test")}
    studies = {s: {r[2] for r in d.rows} for s, d in lvef.items()}
    assert not (studies["train"] & studies["val"]) and not (studies["val"] & studies["test"])
    assert len(studies["train"]) == 6 and isinstance(lvef["train"][0]["label"], float)  # 2 clips per study
    rvsp = data.build_probe_dataset("synthetic", "rvsp", "val", **kw)
    item = rvsp[0]
    assert item["clips"].shape == (len(data.RVSP_VIEWS), 2, 3, 8, 64, 64) and item["present"].dtype == torch.bool
    missing = [i for i, r in enumerate(rvsp.rows) if None in r[0]]
    assert len(missing) < len(rvsp) and all(rvsp.labels)
    ped = data.build_probe_dataset("synthetic", "lvef", "test", domain="pediatric", **kw)
    hr = lambda domain: np.mean([data.synth_patient(0, i, domain)["hr"] for i in range(50)])
    assert ped[0]["clips"].shape == (2, 3, 8, 64, 64) and hr("pediatric") > hr("adult") + 20


def test_data_echonet_fixture():
    with tempfile.TemporaryDirectory() as tmp:
        data.write_dataset(tmp, 8, frames=32, n_pediatric=10, workers=2)  # the Pool path
        with open(os.path.join(tmp, "FileList.csv")) as f:
            lines = f.read().splitlines()
        assert lines[0] == "FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split"
        name = lines[1].split(",")[0]
        assert not name.endswith(".avi") and {l.split(",")[-1] for l in lines[1:]} == {"TRAIN", "VAL", "TEST"}
        with open(os.path.join(tmp, "VolumeTracings.csv")) as f:
            tracings = f.read().splitlines()
        assert tracings[0] == "FileName,X1,Y1,X2,Y2,Frame" and len(tracings) > 1 and (len(tracings) - 1) % 42 == 0
        assert {t.split(",")[0] for t in tracings[1:]} <= {l.split(",")[0] + ".avi" for l in lines[1:]}
        with av.open(os.path.join(tmp, "Videos", name + ".avi")) as c:  # MJPG, 50 fps, grey in 3 channels
            s = c.streams.video[0]
            frame = next(c.decode(s))
            rgb = frame.to_ndarray(format="rgb24").astype(int)
            assert s.codec_tag == "MJPG" and s.average_rate == 50 and s.frames == 32
            assert np.abs(rgb - rgb[..., :1]).max() <= 2
            gray = frame.to_ndarray(format="gray")  # read_video's luma-plane fast path must give exactly this
            assert np.array_equal(data.read_video(os.path.join(tmp, "Videos", name + ".avi"))[0][0], gray)
        view = data.build_probe_dataset(tmp, "view", "train", 8, 64, 25, 0, num_clips=1)  # view_train.csv
        rvsp = data.build_probe_dataset(tmp, "rvsp", "test", 8, 64, 25, 0, num_clips=1)  # rvsp_test.csv
        assert view[0]["clips"].shape == (1, 3, 8, 64, 64) and rvsp[0]["clips"].shape[:2] == (3, 1)
        assert len(data.build_pretrain_dataset(tmp, 8, 64, 25, 0)) == 8 * len(data.VIEWS)  # pretrain.csv
        for name in os.listdir(tmp):  # what remains is the plain EchoNet-Dynamic layout
            if name.endswith(".csv") and name not in ("FileList.csv", "VolumeTracings.csv"):
                os.remove(os.path.join(tmp, name))
        lvef = data.build_probe_dataset(tmp, "lvef", "val", 8, 64, 25, 0)
        assert len(lvef) == 1 and lvef[0]["clips"].shape == (2, 3, 8, 64, 64) and lvef[0]["video"] == "S000006_A4C"
        pre = data.build_pretrain_dataset(tmp, 8, 64, 25, 0)  # the TRAIN split of FileList.csv
        assert len(pre) == 6 and pre[1000].shape == (3, 8, 64, 64)
        ped = os.path.join(tmp, "pediatric")
        test = data.build_probe_dataset(ped, "lvef", "test", 8, 64, 25, 0, fold=3)
        assert [r[2] for r in test.rows] == ["P000003_A4C.avi"] and test[0]["label"] == test.labels[0]
        assert len(data.build_probe_dataset(ped, "lvef", "train", 8, 64, 25, 0, fold=3)) == 8
        assert len(data.build_pretrain_dataset(ped, 8, 64, 25, 0)) == 10  # no fold: every video
        for bad in (lambda: data.build_probe_dataset(ped, "lvef", "test", 8, 64, 25, 0),  # fold ids, no fold
                    lambda: data.build_probe_dataset(tmp, "lvef", "tset", 8, 64, 25, 0)):
            try:
                bad()
                assert False, "no error"
            except ValueError as e:
                assert "fold" in str(e) or "tset" in str(e)


def test_data_bad_inputs():
    def error_of(fn):
        try:
            fn()
        except (ValueError, FileNotFoundError) as e:
            return str(e)
        raise AssertionError("no error raised")
    with tempfile.TemporaryDirectory() as tmp:
        good = os.path.join(tmp, "good.avi")
        data.write_video(good, data.synth_video(0, 0, "A4C", frames=30, size=64)[0], 50)
        def csv_file(name, text):
            with open(os.path.join(tmp, name), "w") as f:
                f.write(text)
            return os.path.join(tmp, name)
        build = lambda path, task="lvef": data.build_probe_dataset(path, task, "train", 8, 32, 25, 0, num_clips=1)
        assert "a.csv:2" in error_of(lambda: build(csv_file("a.csv", "good.avi 50\ngood.avi 50 60\n")))
        assert "b.csv:1" in error_of(lambda: build(csv_file("b.csv", "good.avi nan\n")))
        assert "c.csv:2" in error_of(lambda: build(csv_file("c.csv", "good.avi 50\nnope.avi 50\n")))
        assert "multi-view" in error_of(lambda: build(csv_file("d.csv", "good.avi 50\n"), "rvsp"))
        assert "class id" in error_of(lambda: build(csv_file("e.csv", "good.avi 1.5\n"), "view"))
        os.makedirs(os.path.join(tmp, "echonet", "Videos"))
        os.rename(good, os.path.join(tmp, "echonet", "Videos", "v1.avi"))
        good = os.path.join(tmp, "echonet", "Videos", "v1.avi")
        header = "FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split\n"
        for text, message in ((header + "v1,50,1,2,64,64,50,30,TRAINING\n", "FileList.csv:2: unknown Split"),
                              (header + "v1,,1,2,64,64,50,30,TRAIN\n", "FileList.csv:2: label '' is missing"),
                              (header + "v2,50,1,2,64,64,50,30,TRAIN\n", "FileList.csv:2: video not found"),
                              ("Name,EF\nv1,50\n", "FileList.csv:1: missing columns")):
            csv_file("echonet/FileList.csv", text)
            assert message in error_of(lambda: build(os.path.join(tmp, "echonet"))), message
        # videos that fail mid-run: logged, counted, replaced by the next row
        with open(good, "rb") as f:
            blob = f.read()
        csv_file("truncated.avi", "")
        with open(os.path.join(tmp, "truncated.avi"), "wb") as f:
            f.write(blob[:len(blob) // 3])
        with av.open(os.path.join(tmp, "empty.avi"), "w") as c:  # a valid AVI with zero frames
            s = c.add_stream("mjpeg", rate=50)
            s.width, s.height, s.pix_fmt = 64, 64, "yuvj420p"
            c.start_encoding()  # writes the header
        csv_file("text.avi", "this is not a video\n")
        ds = build(csv_file("bad.csv", "truncated.avi 1\nempty.avi 2\ntext.avi 3\nechonet/Videos/v1.avi 4\n"))
        for name, reason in (("truncated.avi", "truncated"), ("empty.avi", "no frames"), ("text.avi", "InvalidData")):
            message = error_of(lambda: data.read_video(os.path.join(tmp, name), lambda n, fps: np.arange(20)))
            assert name in message and reason in message, message
        item = ds[0]
        assert item["label"] == 4 and ds.n_skipped.value == 3 and "skipped 3" in ds.skip_summary()
        assert all(n in ds.skip_summary() for n in ("truncated.avi", "empty.avi", "text.avi"))


def test_data_video_io():
    with tempfile.TemporaryDirectory() as tmp:
        video = data.synth_video(1, 2, "PSAX", frames=5, size=48)[0]
        data.write_video(os.path.join(tmp, "v.avi"), video, 50, codec="ffv1")
        back, fps = data.read_video(os.path.join(tmp, "v.avi"))
        assert fps == 50 and np.array_equal(back, video)  # FFV1 is lossless
        data.write_video(os.path.join(tmp, "v.mkv"), video, 50, codec="ffv1")  # mkv: no frame count in the header
        back, _ = data.read_video(os.path.join(tmp, "v.mkv"), lambda n, fps: np.array([[4, 0]]))
        assert back.shape == (1, 2, 48, 48) and np.array_equal(back[0, 0], video[4])
        data.write_png(os.path.join(tmp, "a.png"), video[0])
        data.write_png(os.path.join(tmp, "b.png"), np.stack([video[0]] * 3, -1))
        with av.open(os.path.join(tmp, "a.png")) as c:
            assert np.array_equal(next(c.decode(video=0)).to_ndarray(format="gray"), video[0])
        assert os.path.getsize(os.path.join(tmp, "b.png")) > 0

# -----------------------------------------------------------------------------
# probe.py pieces (executed from the script's own source) and runs


class one_thread(contextlib.ContextDecorator):
    """torch on 1 thread inside the block: for tiny tensors, thread sync costs more than the math (up to 100x
    on a busy machine, measured)."""

    def __enter__(self):
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.n)


def probe_namespace(names, **cfg_kw):
    from contextlib import nullcontext
    c = dict(random_init=False, init="", ckpt="", model="", seed=0, view_dropout=0.1)
    c.update(cfg_kw)
    def fail(msg):
        raise ValueError(msg)
    return script_functions("probe.py", names, cfg=types.SimpleNamespace(**c), torch=torch, F=F, np=np, math=math,
                            os=os, copy=__import__("copy"), autocast=nullcontext(), device="cpu", fail=fail,
                            CONFIGS=CONFIGS, Encoder=Encoder, load_strict=model.load_strict,
                            strip_prefixes=model.strip_prefixes)


@one_thread()
def test_probe_rvsp_missing_view_ignored():
    # a MISS view is never encoded and masked out of the probe: the prediction cannot depend on its pixels
    ns = probe_namespace(["encode_batch", "key_padding", "predict", "drop_views"])
    torch.manual_seed(0)
    enc = Encoder(tiny_cfg()).eval()
    probe = AttentiveProbe(96, 1, depth=2, heads=16, num_views=3, num_clips=2).eval()
    clips = torch.randn(2, 3, 2, 3, 4, 32, 32)  # (B, V, C, 3, T, H, W)
    present = torch.tensor([[True, False, True], [True, True, True]])
    clips2 = clips.clone()
    clips2[0, 1] = torch.randn_like(clips2[0, 1]) * 10  # pixels of the missing view
    clips2[1, 0] += 1.0  # pixels of a present view
    out = [ns["predict"]([probe], dict(feats=ns["encode_batch"](enc, c, present), present=present))[0]
           for c in (clips, clips2)]
    assert torch.allclose(out[0][0], out[1][0], atol=1e-6), "the MISS view leaked into the prediction"
    assert not torch.allclose(out[0][1], out[1][1], atol=1e-4), "a present view must matter"
    # view dropout: hides only present views, always keeps one
    gen = torch.Generator().manual_seed(0)
    pres = torch.rand(500, 3, generator=gen) < 0.7
    pres[~pres.any(1), 0] = True
    keep = ns["drop_views"](pres, 0.9, gen)
    assert (keep <= pres).all() and keep.any(1).all() and keep.sum() < pres.sum()


def test_probe_label_subset():
    sub = probe_namespace(["label_subset"])["label_subset"]
    labels = np.array([0] * 100 + [1] * 50 + [2] * 3 + [3] * 1)
    s = sub(labels, 0.01, 0, True)
    assert [int((labels[s] == c).sum()) for c in range(4)] == [2, 2, 2, 1]  # >= 2 per class, or all of it
    assert np.array_equal(s, sub(labels, 0.01, 0, True)) and not np.array_equal(s, sub(labels, 0.01, 1, True))
    assert [int((labels[sub(labels, 0.5, 0, True)] == c).sum()) for c in range(4)] == [50, 25, 2, 1]  # ceil
    assert np.array_equal(sub(labels, 1.0, 0, True), np.arange(len(labels)))
    ef = np.random.default_rng(0).normal(55, 12, 1000)
    r = sub(ef, 0.01, 0, False)  # regression: 2 per quantile bin, spanning the EF range
    assert len(r) == 10 and len(set(r)) == 10
    assert sorted(np.searchsorted(np.quantile(ef, [0.2, 0.4, 0.6, 0.8]), ef[r])) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


@one_thread()
def test_probe_load_encoder_checks():
    with tempfile.TemporaryDirectory() as d:
        def err(**kw):
            try:
                probe_namespace(["load_encoder"], **kw)["load_encoder"]()
            except ValueError as e:
                return str(e)
            raise AssertionError(f"no error for {kw}")
        tiny = Encoder(tiny_cfg()).state_dict()
        torch.save(dict(target_encoder=tiny, config=dict(model="vitq")), os.path.join(d, "bad.pt"))
        assert "does not match the model" in err(ckpt=os.path.join(d, "bad.pt"))
        assert "run `python pretrain.py` first" in err(ckpt=os.path.join(d, "nope.pt"))
        torch.save(dict(target_encoder={f"module.backbone.{k}": v for k, v in tiny.items()}), os.path.join(d, "o.pt"))
        assert "no known encoder of width 96 and depth 2" in err(init=os.path.join(d, "o.pt"))
        q = Encoder(CONFIGS["vitq"]).state_dict()
        torch.save(dict(target_encoder={f"module.backbone.{k}": v for k, v in q.items()}), os.path.join(d, "q.pt"))
        enc, src = probe_namespace(["load_encoder"], init=os.path.join(d, "q.pt"))["load_encoder"]()
        assert "vit_quick" in src and torch.equal(enc.norm.weight, q["norm.weight"])  # size read off the weights
        assert "does not match" in err(init=os.path.join(d, "q.pt"), model="vitt")


PROBE_TINY = ["--random_init", "--frames", "2", "--crop", "32", "--n_train", "12", "--n_val", "6", "--n_test", "6",
              "--epochs", "2", "--num_workers", "0", "--probe_depth", "2"]


def run_probe(args):
    """probe.py as __main__ in this process on one thread, after PROBE_TINY: (exit code, stderr). A clean error
    exits through SystemExit; anything else (a traceback) propagates and fails the test."""
    with one_thread():
        code, out, err = run_script("probe.py", [*PROBE_TINY, *args])
    return code, err


def test_probe_runs_and_bad_inputs():
    with tempfile.TemporaryDirectory() as d:
        code, err = run_probe(["--task", "rvsp", "--lrs", "1e-4", "--wds", "0.1", "0.4", "--probe", "attentive",
                               "--out_dir", os.path.join(d, "rvsp"),
                               "--attn_maps", "6", "--embed_map"])  # multi-view pictures: first view, quintiles
        assert code == 0, err[-2000:]
        assert len(os.listdir(os.path.join(d, "rvsp", "attn_maps"))) == 2 * 6
        assert json.load(open(os.path.join(d, "rvsp", "metrics.json")))["embed_map"]["groups"] == "label quintiles"
        with open(os.path.join(d, "single.csv"), "w") as f:
            f.write("a.avi 30\n")
        os.makedirs(os.path.join(d, "notest"))  # a data folder with a train split only
        data.write_video(os.path.join(d, "notest", "a.avi"), np.zeros((4, 32, 32), np.uint8), 50)
        with open(os.path.join(d, "notest", "lvef_train.csv"), "w") as f:
            f.write("a.avi 30\n")
        for args, want in ((["--label_frac", "0"], "must be in (0, 1]"), (["--label_frac", "1.5"], "must be in (0, 1]"),
                           (["--task", "size"], "invalid choice"),
                           (["--no-random_init", "--ckpt", os.path.join(d, "nope.pt")], "run `python pretrain.py` first"),
                           (["--task", "rvsp", "--data", os.path.join(d, "single.csv")], "multi-view"),
                           (["--robustness", "--corruptions", "da,fog"], "unknown corruption kind 'fog'"),
                           (["--robustness", "--levels", "low,extreme"], "unknown corruption level 'extreme'"),
                           (["--task", "lvef", "--data", os.path.join(d, "notest")], "no lvef_test.csv")):
            code, err = run_probe([*args, "--out_dir", os.path.join(d, "x")])
            last = err.strip().splitlines()[-1]
            assert code != 0 and want in last and "error" in last, (args, err[-500:])  # one clear line
        code, out, err = run_script("probe.py", [*PROBE_TINY, "--task", "view", "--label_frac", "0.5", "--probe",
                                                 "attentive", "--out_dir", os.path.join(d, "view")])
        assert code == 0, err[-2000:]
        assert "note: 12 labelled train items: results move by several points with --seed" in out
        for task, n_out, n_heads in (("view", len(data.VIEWS), 6), ("rvsp", 1, 2)):
            run_dir = os.path.join(d, task)
            ck = torch.load(os.path.join(run_dir, "probe.pt"), weights_only=False)
            assert len(ck["classifiers"]) == len(ck["grid"]) == n_heads and ck["probe_args"]["num_outputs"] == n_out
            assert (ck["zscore"] is None) == (task == "view") and ck["config"]["task"] == task
            key = (lambda m: -m["accuracy"]) if task == "view" else (lambda m: m["mae"])
            assert [key(m) for m in ck["val"]] == sorted(key(m) for m in ck["val"])  # best head first
            for sd in ck["classifiers"]:  # every head loads back with strict keys
                model.load_strict(AttentiveProbe(**ck["probe_args"]), sd)
                assert all(k.split(".")[0] in ("pooler", "linear", "view_embed", "clip_embed") for k in sd)
            m = json.load(open(os.path.join(run_dir, "metrics.json")))
            with open(os.path.join(run_dir, "test_predictions.csv")) as f:
                assert f.readline().startswith("study,video,prediction,label") and len(f.readlines()) == 6
            assert m["test"]["n"] == 6 and m["best"]["lr"] == ck["grid"][0][0]
        assert len(open(os.path.join(d, "view", "train_subset.csv")).read().splitlines()) == 1 + 12
        assert os.path.getsize(os.path.join(d, "view", "confusion_test.png")) > 0
        # the trained probe, loaded back, on pediatric test videos clean and corrupted on the fly
        code, err = run_probe(["--task", "view", "--ckpt_probe", os.path.join(d, "view", "probe.pt"), "--robustness",
                               "--eval_domain", "pediatric", "--out_dir", os.path.join(d, "robust")])
        assert code == 0, err[-2000:]
        m = json.load(open(os.path.join(d, "robust", "metrics.json")))
        assert sorted(m["robustness"]) == [f"{k}_{lv}" for k in ("da", "gs") for lv in ("high", "low", "med")]
        assert m["eval_domain"] == "pediatric" and m["test"]["n"] == 6 and math.isfinite(m["avg_degradation_pct"])
        for seed in (0, 1):  # the probe was trained on the seed-0 random encoder: another encoder gets a note
            code, out, err = run_script("probe.py", [*PROBE_TINY, "--task", "view", "--seed", str(seed), "--ckpt_probe",
                                                     os.path.join(d, "view", "probe.pt"), "--out_dir", os.path.join(d, "x")])
            assert code == 0 and ("was trained on the features of random init vit_quick (seed 0), not of random init "
                                  "vit_quick (seed 1)" in out) == (seed == 1), out[-500:]
        # a multi-view CSV whose view 0 is MISS: each row is its own study (named by its first present view, not
        # 'MISS'), and the attention map shows the first present view, not the zero-weight missing slot
        rng = np.random.default_rng(0)
        for name in ("p.avi", "q.avi", "r.avi"):
            data.write_video(os.path.join(d, name), rng.integers(0, 255, (4, 32, 32), dtype=np.uint8), 50)
        with open(os.path.join(d, "mv_test.csv"), "w") as f:
            f.write("MISS p.avi q.avi 40\nMISS r.avi MISS 25\n")
        code, err = run_probe(["--task", "rvsp", "--ckpt_probe", os.path.join(d, "rvsp", "probe.pt"), "--data",
                               os.path.join(d, "mv_{split}.csv"), "--attn_maps", "2", "--out_dir", os.path.join(d, "mv")])
        assert code == 0, err[-2000:]
        assert json.load(open(os.path.join(d, "mv", "metrics.json")))["test"]["n"] == 2
        with open(os.path.join(d, "mv", "test_predictions.csv")) as f:
            assert [r.split(",")[0] for r in f.read().splitlines()[1:]] == ["p.avi", "r.avi"]
        import av
        pngs = [f for f in os.listdir(os.path.join(d, "mv", "attn_maps")) if f.endswith(".png")]
        assert len(pngs) == 2
        for png in pngs:
            with av.open(os.path.join(d, "mv", "attn_maps", png)) as c:
                strip = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(float)  # grey above, blend below
            heat = strip[32:] - 0.5 * strip[:32]  # = 0.5 * jet(map) up to rounding: flat if it showed the empty slot
            assert np.ptp(heat) > 20, np.ptp(heat)
        with open(os.path.join(d, "two_test.csv"), "w") as f:  # 2 views per study for a 3-slot probe: one line
            f.write("p.avi q.avi 40\n")
        code, err = run_probe(["--task", "rvsp", "--ckpt_probe", os.path.join(d, "rvsp", "probe.pt"), "--eval_data",
                               os.path.join(d, "two_{split}.csv"), "--out_dir", os.path.join(d, "x")])
        last = err.strip().splitlines()[-1]
        assert code != 0 and "2 views per study, but the probe has 3 view slots" in last and "error" in last, last
        code, err = run_probe(["--task", "rvsp", "--ckpt_probe", os.path.join(d, "rvsp", "probe.pt"), "--num_clips",
                               "1", "--out_dir", os.path.join(d, "x")])  # slot embeddings would land on wrong tokens
        last = err.strip().splitlines()[-1]
        assert code != 0 and "has 2 clip slots per view, this run encodes 1: pass --num_clips 2" in last, last


@one_thread()
def test_probe_official_ckpt_eval_data_and_pictures():
    # an official probe file ({"classifiers": [DDP 'module.' keys]}, nothing else) evaluates exactly like the same head
    # saved as a probe.pt; --eval_data of the very same data repeats the built-in test row; the pictures decode
    import av
    with tempfile.TemporaryDirectory() as d:
        data.write_dataset(os.path.join(d, "ds"), 8, frames=8, n_pediatric=0)  # patient 7 = the test split
        metrics = lambda run: json.load(open(os.path.join(d, run, "metrics.json")))
        torch.manual_seed(0)
        view_out, zstats = "", script_functions("probe.py", ["zscore_stats"], np=np)["zscore_stats"]
        for task, n_out, src in (("view", 6, os.path.join(d, "ds")), ("lvef", 1, "synthetic")):
            head = AttentiveProbe(192, n_out, depth=2, heads=16)  # the random-init vitq encoder is 192 wide
            for p in head.parameters():
                torch.nn.init.normal_(p, std=0.1)  # varied predictions
            zs = None if task == "view" else zstats(data.build_probe_dataset(
                src, task, "train", 2, 32, 8.0, 0, n_train=12).labels)  # what probe.py must derive from the labels
            torch.save(dict(classifiers=[{"module." + k: v for k, v in head.state_dict().items()}] * 2),
                       os.path.join(d, f"{task}_official.pt"))
            torch.save(dict(classifiers=[head.state_dict()], grid=[(1e-3, 0.01)], zscore=zs, config=dict(task=task),
                            probe_args=dict(dim=192, num_outputs=n_out, depth=2, heads=16), val=[dict(
                                n=1, accuracy=0, balanced_accuracy=0, mae=0, rmse=0, r2=0, pearson=0)]),
                       os.path.join(d, f"{task}_ours.pt"))
            args = ["--task", task, "--data", src, "--frames", "4"]
            code, err = run_probe([*args, "--ckpt_probe", os.path.join(d, f"{task}_ours.pt"), "--out_dir",
                                   os.path.join(d, f"{task}_ours")])
            assert code == 0, err[-2000:]
            extra = ["--eval_data", src, "--attn_maps", "2", "--embed_map"] if task == "view" else []
            code, out, err = run_script("probe.py", [*PROBE_TINY, *args, *extra, "--ckpt_probe",
                                                     os.path.join(d, f"{task}_official.pt"), "--out_dir",
                                                     os.path.join(d, f"{task}_official")])
            assert code == 0, err[-2000:]
            assert "2 classifiers, evaluating the first" in out
            view_out = out if task == "view" else view_out
            assert ("without z-score statistics" in out) == (task == "lvef")
            m = metrics(f"{task}_official")
            assert m["test"] == metrics(f"{task}_ours")["test"] and m["best"] is None and m["val"] is None
            preds = [open(os.path.join(d, f"{task}_{k}", "test_predictions.csv")).read() for k in ("ours", "official")]
            assert preds[0] == preds[1]  # lvef: the same float predictions, so the same z-score too
        m_view = metrics("view_official")
        (name, ext), = m_view["external"].items()
        assert name == "eval_ds" and ext.pop("data") == os.path.join(d, "ds") and ext == m_view["test"]
        run = os.path.join(d, "view_official")
        assert open(os.path.join(run, "eval_ds_predictions.csv")).read() == \
            open(os.path.join(run, "test_predictions.csv")).read()
        # pictures: 2 attention videos (4 frames of 32 x 32) + strips (grey row, heat row), the embedding map
        def decode(path):
            with av.open(path) as c:
                return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        mp4s = sorted(f for f in os.listdir(os.path.join(run, "attn_maps")) if f.endswith(".mp4"))
        assert len(mp4s) == 2
        for f in mp4s:
            frames = decode(os.path.join(run, "attn_maps", f))
            strip, = decode(os.path.join(run, "attn_maps", f[:-4] + ".png"))
            assert len(frames) == 4 and frames[0].shape == (32, 32, 3) and strip.shape == (64, 128, 3)
            grey = strip[..., 0] == strip[..., 2]  # R = B: grey frames above, coloured heat below
            assert grey[:32].all() and not grey[32:].all()
        emb, = decode(os.path.join(run, "embed_map.png"))
        assert emb.shape == (400, 540, 3) and len(np.unique(emb.reshape(-1, 3), axis=0)) >= 6 + 2
        assert -1 <= m_view["embed_map"]["silhouette"] <= 1
        # the text previews: a (crop/16)-row attention frame of the ramp's characters, a 20-row scatter of view marks
        att = view_out.split("min-max scaled ' ' to '@':\n")[1].splitlines()[:2]
        assert all(len(r) == 4 + 2 + 2 * 2 and set(r[5:-1]) <= set(" .:-=+*#%@") for r in att), att
        scatter = view_out.split("PC1 across, PC2 up; ")[1].splitlines()[1:21]
        assert all(len(r) == 4 + 2 + 64 for r in scatter) and set("".join(scatter)) - set(" |") <= set("423L5S")
        # one clear line: a missing --eval_data, labels that do not fit the task, a probe of another width
        # and official probes of another task (a view head for LVEF, an RVSP head with view slots for LVEF)
        torch.save(dict(classifiers=[AttentiveProbe(96, 6, depth=2, heads=16).state_dict()]), os.path.join(d, "w.pt"))
        torch.save(dict(classifiers=[AttentiveProbe(192, 1, depth=2, heads=16, num_views=3, num_clips=2).state_dict()]),
                   os.path.join(d, "rvsp.pt"))
        with open(os.path.join(d, "ds", "view_9.csv"), "w") as fh:
            fh.write("Videos/S000007_A4C.avi 9\n")
        official = ["--ckpt_probe", os.path.join(d, "view_official.pt")]
        for args, want in ((["--eval_data", os.path.join(d, "nope")], "no such file or folder"),
                           (["--eval_data", os.path.join(d, "ds", "lvef_test.csv")], "not a class id"),
                           (["--eval_data", os.path.join(d, "ds", "view_9.csv")], "class id 9, but the probe has 6"),
                           (["--ckpt_probe", os.path.join(d, "w.pt")], "probe of width 96"),
                           (["--task", "lvef"], "6 outputs and 0 view slots: not a --task lvef probe"),
                           (["--task", "lvef", "--ckpt_probe", os.path.join(d, "rvsp.pt")],
                            "1 outputs and 3 view slots: not a --task lvef probe")):
            code, err = run_probe(["--task", "view", *official, *args, "--out_dir", os.path.join(d, "x")])
            last = err.strip().splitlines()[-1]
            assert code != 0 and want in last and "error" in last, (args, err[-500:])


@one_thread()
def test_probe_pca_and_silhouette():
    ns = probe_namespace(["pca2", "silhouette"])
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(50, 2, generator=g))[0]  # a plane in 50-d
    x = (torch.randn(300, 2, generator=g) * torch.tensor([3.0, 1.0])) @ basis.T
    x += 0.01 * torch.randn(300, 50, generator=g)
    z, v, ratio = ns["pca2"](x + 5)
    assert torch.allclose(torch.linalg.svdvals(v.T @ basis), torch.ones(2), atol=1e-3)  # the planted subspace
    assert ratio.sum() > 0.99 and ratio[0] > ratio[1] and torch.allclose(z, (x - x.mean(0)) @ v, atol=1e-4)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    tight = np.eye(4)[labels] * 10 + rng.normal(0, 0.1, (200, 4))
    assert ns["silhouette"](tight, labels) > 0.95
    assert abs(ns["silhouette"](rng.normal(size=(200, 8)), labels)) < 0.05
    x, labels = rng.normal(size=(13, 3)), np.array([0] * 6 + [1] * 6 + [2])  # against the textbook loop
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    ref = []
    for i in range(13):
        own = (labels == labels[i]) & (np.arange(13) != i)
        a = d[i, own].mean() if own.any() else 0
        b = min(d[i, labels == c].mean() for c in set(labels) - {labels[i]})
        ref.append((b - a) / max(a, b) if own.any() else 0)
    assert abs(ns["silhouette"](x, labels) - np.mean(ref)) < 1e-9
    assert math.isnan(ns["silhouette"](x, np.zeros(13)))


def test_probe_frame_hook():
    # data.py's frame_fn: [0, 1] float frames at native size and a per-view video id, before resize/normalise
    seen = []
    def black(v, video_id):
        seen.append((v.dtype, v.shape, 0 <= v.min() <= v.max() <= 1, video_id))
        return v * 0
    ds = data.build_probe_dataset("synthetic", "rvsp", "test", 2, 32, 8.0, 0, num_clips=1, n_test=8, frame_fn=black)
    i = next(i for i in range(8) if not ds[i]["present"].all())  # a study with a MISS view
    seen.clear()
    item = ds[i]
    ids = [s[3] for s in seen]
    assert all(s[0] == np.float32 and s[1] == (2, 112, 112) and s[2] for s in seen) and len(ids) == 2
    assert ids == [f"{item['video']}/{v}" for v in range(3) if item["present"][v]]  # missing view never loaded
    zero = data.normalize(torch.zeros(2, 32, 32))
    assert all(torch.allclose(item["clips"][v, 0], zero) for v in range(3) if item["present"][v])


# -----------------------------------------------------------------------------
# learning signal: the online read-out, seed repetition, recipe levers (issue 15)


def test_readout_ridge_loo_and_rankme():
    """The read-out's ridge picks the lambda whose leave-one-out error, by brute-force refits, is smallest (its
    hat-matrix shortcut is exact), and recovers a linear map; RankMe is ~1 for a collapsed embedding and large for
    an isotropic one."""
    def fit_predict(x, y, xt, **k):
        W, b, _ = model.ridge(x, y, **k)
        return xt @ W + b
    ns = dict(ridge=fit_predict, rankme=model.rankme)
    g = torch.Generator().manual_seed(0)
    f64 = dict(generator=g, dtype=torch.float64)
    x, w = torch.randn(30, 20, **f64), torch.randn(20, 2, **f64)
    y = x[:, :3] @ w[:3] + 0.5 * torch.randn(30, 2, **f64)  # 3 of 20 features matter: lambda matters
    xs = (x - x.mean(0)) / (x.std(0) + 1e-8)  # ridge standardises with the train statistics, then fits
    lams = [0.1, 1.0, 10.0, 100.0, 1000.0]
    def brute_loo(lam):  # refit intercept + ridge without sample i, predict sample i
        err = 0.0
        for i in range(len(x)):
            keep = torch.arange(len(x)) != i
            a, ym = xs[keep] - xs[keep].mean(0), y[keep].mean(0)
            coef = torch.linalg.solve(a.T @ a + lam * torch.eye(20, dtype=torch.float64), a.T @ (y[keep] - ym))
            err += (((xs[i] - xs[keep].mean(0)) @ coef + ym - y[i]) ** 2).sum().item()
        return err
    errs = [brute_loo(lam) for lam in lams]
    best = lams[int(np.argmin(errs))]
    assert 1.0 <= best <= 100.0 and max(errs) > 1.1 * min(errs), errs  # an interior, clear minimum
    xt = torch.randn(10, 20, **f64)
    assert torch.allclose(ns["ridge"](x, y, xt, lams=lams), ns["ridge"](x, y, xt, lams=[best]))
    assert not torch.allclose(ns["ridge"](x, y, xt, lams=[lams[0]]), ns["ridge"](x, y, xt, lams=[best]))
    p = ns["ridge"](x, y, x)
    assert ((p - y) ** 2).mean() < 0.5 * ((y - y.mean(0)) ** 2).mean()  # explains most of the variance
    assert abs(model.ridge(x, y, lams=lams)[2] - min(errs) / (len(x) * 2)) < 1e-9  # its LOO mean squared error
    line = torch.randn(50, 1, **f64) @ torch.randn(1, 16, **f64)
    assert ns["rankme"](line) < 1.1 and ns["rankme"](torch.randn(500, 16, **f64)) > 14


def test_pretrain_readout_curve_and_checkpoints():
    """The online read-out logs at step 0 (the random init), every --eval_interval and the end into readout.csv;
    --readout_only reproduces step 0 from 'random' and the last row from the saved checkpoint."""
    with tempfile.TemporaryDirectory() as d:
        ro = ["--eval_interval", "2", "--readout_n", "1"]
        rc, out, err = run_script("pretrain.py", [*TINY_RUN, *ro, "--steps", "3", "--readout_context", "--out_dir", d])
        assert rc == 0, err[-2000:]
        rows = list(csv.DictReader(open(os.path.join(d, "readout.csv"))))
        assert [(int(r["step"]), r["encoder"]) for r in rows] == [(0, "target"), (0, "pixels"), (2, "target"),
                                                                 (2, "context"), (3, "target"), (3, "context")]
        pixels, context = rows.pop(1), rows.pop(2)
        assert float(pixels["rankme"]) > 1 and float(context["rankme"]) != float(rows[1]["rankme"])
        rows.pop(-1)  # [step 0, 2, 3] of the target
        assert "readout step      0 | view acc" in open(os.path.join(d, "log.txt")).read()
        for r in rows:
            assert 0 <= float(r["view_acc_mean"]) <= 1 and 0 <= float(r["view_acc_grid"]) <= 1
            assert float(r["ef_mae_meanpred"]) > 0 and 1 <= float(r["rankme"]) <= 192
        rc, out, err = run_script("pretrain.py", [*TINY_RUN, *ro, "--out_dir", os.path.join(d, "again"),
                                                  "--readout_only", "random", os.path.join(d, "ckpt.pt"), "pixels"])
        assert rc == 0, err[-2000:]
        again = list(csv.DictReader(open(os.path.join(d, "again", "readout.csv"))))
        assert again[0]["encoder"] == "random init (seed 0)" and again[1]["step"] == "3"
        for a, b in ((again[0], rows[0]), (again[1], rows[2]), (again[2], pixels)):
            for k in a:
                if k not in ("encoder", "seconds"):
                    assert abs(float(a[k]) - float(b[k])) < 1e-4, (k, a[k], b[k])
        assert any(float(rows[0][k]) != float(rows[2][k]) for k in ("ef_mae_grid", "rankme"))  # it moved
        rc, out, err = run_script("pretrain.py", [*TINY_RUN, "--readout_only", os.path.join(d, "log.txt")])
        assert rc != 0 and "not a pretrain.py checkpoint" in err.strip().splitlines()[-1]


def test_pretrain_readout_on_user_data_and_none():
    """--data with a labelled VAL split (an EchoNet FileList): the read-out scores LVEF on those videos (no view
    columns) and says so; --readout none skips it; --readout data without labels is one clear error line."""
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "echo", "Videos"))
        rng = np.random.default_rng(0)
        with open(os.path.join(d, "echo", "FileList.csv"), "w") as f:
            f.write("FileName,EF,Split\nbad,40,TRAIN\n")  # not a video: skipped, counted
            open(os.path.join(d, "echo", "Videos", "bad.avi"), "w").write("not a video")
            for i, split in enumerate(["TRAIN"] * 2 + ["VAL"] * 16):
                data.write_video(os.path.join(d, "echo", "Videos", f"v{i}.avi"),
                                 rng.integers(0, 255, (8, 64, 64), dtype=np.uint8), 50)
                f.write(f"v{i},{30 + 5 * i},{split}\n")
        run = ["--data", os.path.join(d, "echo"), "--eval_interval", "1", "--steps", "1", "--readout_n", "1"]
        rc, out, err = run_script("pretrain.py", [*TINY_RUN, *run, "--out_dir", os.path.join(d, "a")])
        assert rc == 0, err[-2000:]
        rows = list(csv.DictReader(open(os.path.join(d, "a", "readout.csv"))))
        assert [(r["step"], r["encoder"]) for r in rows] == [("0", "target"), ("0", "pixels"), ("1", "target")]
        assert all(math.isnan(float(r["view_acc_mean"])) and math.isfinite(float(r["ef_mae_grid"])) for r in rows)
        assert "VAL (16 labelled videos)" in open(os.path.join(d, "a", "log.txt")).read()
        assert "skipped 1 bad videos" in open(os.path.join(d, "a", "log.txt")).read(), out[-1000:]
        rc, out, err = run_script("pretrain.py", [*TINY_RUN, *run, "--readout", "none", "--out_dir", os.path.join(d, "b")])
        assert rc == 0 and not os.path.exists(os.path.join(d, "b", "readout.csv")), err[-2000:]
        with open(os.path.join(d, "echo", "FileList.csv"), "w") as f:  # 4 VAL rows: too few to score
            f.write("FileName,EF,Split\nv0,30,TRAIN\nv1,35,TRAIN\n" + "".join(f"v{i},{9 * i},VAL\n" for i in range(2, 6)))
        rc, out, err = run_script("pretrain.py", [*TINY_RUN, *run, "--readout", "data", "--out_dir", os.path.join(d, "c")])
        last = err.strip().splitlines()[-1]
        assert rc != 0 and "--readout data:" in last and "4 VAL rows" in last and "need 16" in last, last
        rc, out, err = run_script("pretrain.py", [*TINY_RUN, *run, "--steps", "0", "--out_dir", os.path.join(d, "e")])
        assert rc == 0 and "| synthetic (" in open(os.path.join(d, "e", "log.txt")).read(), err[-2000:]  # says why


def test_jepa_variance_hinge():
    """--reg_coeff adds V-JEPA 1's hinge mean(relu(1 - sqrt(var over tokens + 1e-4))) on the predictions,
    averaged over the mask pairs; 0 leaves the official loss."""
    cfg = tiny_cfg()
    torch.manual_seed(0)
    enc, pred = Encoder(cfg), build_predictor(cfg)
    grid = (2, 4, 4)
    clips = torch.randn(2, 3, 4, 64, 64)
    pairs = masks.sample_masks(grid, [0, 1], 0)
    losses = {}
    for coeff in (0.0, 0.5):
        ns = script_functions("pretrain.py", ["jepa_loss"], torch=torch, F=F, target_encoder=enc, encoder=enc,
                              predictor=pred, grid=grid, cfg=types.SimpleNamespace(reg_coeff=coeff))
        losses[coeff] = ns["jepa_loss"](clips, pairs)[0].item()
    with torch.no_grad():
        z = [pred(enc(clips, c), c, t, grid) for c, t in pairs]
    hinge = F.relu(1 - sum(torch.sqrt(zi.var(dim=1) + 1e-4) for zi in z) / len(z)).mean().item()
    assert hinge > 0.5 and abs(losses[0.5] - losses[0.0] - 0.5 * hinge) < 1e-5, (losses, hinge)


def test_mask_policies_and_pairs():
    """--masks small keeps the short-range generator and shrinks the long-range blocks; --mask_pairs k draws k
    independent pairs per generator, the first being the reference draw, all disjoint and within budget."""
    grid, keys = (8, 7, 7), list(range(4))
    ref = masks.sample_masks(grid, keys, 5, seed=3)
    two = masks.sample_masks(grid, keys, 5, 3, masks.MASK_POLICIES["official"], pairs_per_gen=2)
    assert len(two) == 4 and all(torch.equal(a, b) for p, q in zip(ref, two[::2]) for a, b in zip(p, q))
    assert not torch.equal(two[0][0], two[1][0]) and not torch.equal(two[2][1], two[3][1])
    small = masks.MASK_POLICIES["small"]
    b = masks.budgets(grid, small)
    assert b[0] == masks.budgets(grid)[0] and b[1][0] > 4 * masks.budgets(grid)[1][0]  # 98 vs 20 context tokens
    for ctx, tgt in masks.sample_masks(grid, keys, 5, 3, small, 2) + two:
        for c, t in zip(ctx.tolist(), tgt.tolist()):
            assert not set(c) & set(t) and max(c + t) < 392 and c == sorted(c)


def test_probe_seeds_reuse_encoded_clips():
    """--seeds repeats the run (label draw, probe init, random encoder) and reports mean +- sd with each seed's
    value; a trained encoder's val/test clips are encoded once for all seeds, a random one's anew per seed."""
    with tempfile.TemporaryDirectory() as d:
        ck = os.path.join(d, "ckpt.pt")
        torch.manual_seed(0)
        torch.save(dict(target_encoder=Encoder(CONFIGS["vitq"]).state_dict(), config=dict(model="vitq")), ck)
        for name, extra in (("trained", ["--no-random_init", "--ckpt", ck]), ("random", [])):
            cache = os.path.join(d, f"cache_{name}")
            code, err = run_probe(["--task", "view", "--label_frac", "0.5", "--n_train", "24", "--num_clips", "1",
                                   "--epochs", "1", "--seeds", "0", "1", *extra,
                                   "--cache_dir", cache, "--out_dir", os.path.join(d, name)])
            assert code == 0, err[-2000:]
            m = json.load(open(os.path.join(d, name, "metrics_seeds.json")))
            acc = [json.load(open(os.path.join(d, name, f"seed{s}", "metrics.json")))["test"]["accuracy"] for s in (0, 1)]
            assert m["seeds"] == [0, 1] and m["test"]["accuracy"]["values"] == acc
            assert m["probe"] == "linear"  # --probe auto below 100 % labels
            assert abs(m["test"]["accuracy"]["mean"] - np.mean(acc)) < 1e-9
            assert abs(m["test"]["accuracy"]["sd"] - np.std(acc, ddof=1)) < 1e-9
            subsets = [open(os.path.join(d, name, f"seed{s}", "train_subset.csv")).read() for s in (0, 1)]
            assert subsets[0] != subsets[1]  # each seed draws its own labelled videos
            # linear probe (no val): trained: 2 train subsets + test; random: both twice (a new encoder per seed)
            assert len(os.listdir(cache)) == (3 if name == "trained" else 4), os.listdir(cache)
        code, err = run_probe(["--seeds", "0", "1", "--ckpt_probe", ck,
                               "--out_dir", os.path.join(d, "x")])
        assert code != 0 and "--ckpt_probe evaluates a trained probe" in err.strip().splitlines()[-1]


def test_probe_export_features_is_what_linear_fits():
    """--export_features works for --random_init, --ckpt (pretrain.py) and --init (official keys), and the exported
    pooled features are exactly what --probe linear fits: model.ridge on the npz reproduces its test predictions."""
    with tempfile.TemporaryDirectory() as d:
        torch.manual_seed(1)
        sd = Encoder(CONFIGS["vitq"]).state_dict()
        torch.save(dict(target_encoder=sd, config=dict(model="vitq")), os.path.join(d, "ckpt.pt"))
        torch.save(dict(target_encoder={f"module.backbone.{k}": v for k, v in sd.items()}), os.path.join(d, "off.pt"))
        npz = {}
        for name, src in (("random", []), ("ckpt", ["--no-random_init", "--ckpt", os.path.join(d, "ckpt.pt")]),
                          ("init", ["--no-random_init", "--init", os.path.join(d, "off.pt")])):
            code, err = run_probe(["--task", "lvef", "--label_frac", "0.5", *src, "--export_features",
                                   "--out_dir", os.path.join(d, name)])
            assert code == 0, err[-2000:]
            npz[name] = dict(np.load(os.path.join(d, name, "features.npz")))
            rows = open(os.path.join(d, name, "features.csv")).read().splitlines()
            assert rows[0] == "row,split,video,study,label" and len(rows) == 1 + len(npz[name]["label"])
        z = npz["ckpt"]
        assert all(np.array_equal(z[k], npz["init"][k]) for k in z)  # the same weights, either file format
        assert not np.allclose(z["mean"], npz["random"]["mean"])
        assert list(np.unique(z["split"])) == ["test", "train", "val"] and (z["split"] == "test").sum() == 6
        assert z["grid"].shape[1] == 8 * z["mean"].shape[1] == 8 * 192 and np.isfinite(z["grid"]).all()
        code, err = run_probe(["--task", "lvef", "--label_frac", "0.5", "--no-random_init", "--ckpt",
                               os.path.join(d, "ckpt.pt"), "--probe", "linear", "--out_dir", os.path.join(d, "lin")])
        assert code == 0, err[-2000:]
        pool = json.load(open(os.path.join(d, "lin", "metrics.json")))["best"]["pool"]
        tr, te = z["split"] == "train", z["split"] == "test"
        W, b, _ = model.ridge(torch.from_numpy(z[pool][tr]), torch.from_numpy(z["label"][tr].astype(float))[:, None])
        want = (torch.from_numpy(z[pool][te]) @ W + b)[:, 0].numpy()
        with open(os.path.join(d, "lin", "test_predictions.csv")) as f:
            got = np.array([float(r["prediction"]) for r in csv.DictReader(f)])
        assert np.allclose(got, want, atol=1e-6), (got, want)


def test_probe_position_option():
    """--probe_pos: a fixed 3D sin-cos table (no parameters, not in the state dict: official keys unchanged) breaks
    the pooler's permutation invariance; a probe.pt trained with it evaluates back to the same numbers."""
    table = model.sincos_3d((4, 2, 3), 96)
    assert table.shape == (24, 96) and len(torch.unique(table, dim=0)) == 24 and table[:, 3 * 32:].abs().sum() == 0
    torch.manual_seed(0)
    plain, pos = AttentiveProbe(96, 3, depth=2, heads=4), AttentiveProbe(96, 3, depth=2, heads=4, pos_grid=(4, 2, 3))
    assert list(pos.state_dict()) == list(plain.state_dict())
    pos.load_state_dict(plain.state_dict())
    x, perm = torch.randn(2, 2 * 24, 96), torch.randperm(2 * 24)  # 2 clips of 24 tokens each
    assert (plain(x) - plain(x[:, perm])).abs().max() < 1e-6  # no position: token order does not matter
    assert (pos(x) - pos(x[:, perm])).abs().max() > 1e-4 and (pos(x) - plain(x)).abs().max() > 1e-2
    with tempfile.TemporaryDirectory() as d:
        code, err = run_probe(["--probe", "attentive", "--probe_pos", "--out_dir", os.path.join(d, "a")])
        assert code == 0, err[-2000:]
        code, err = run_probe(["--ckpt_probe", os.path.join(d, "a", "probe.pt"), "--out_dir", os.path.join(d, "b")])
        assert code == 0, err[-2000:]
        m = [json.load(open(os.path.join(d, r, "metrics.json")))["test"] for r in "ab"]
        assert m[0] == m[1]


def test_every_cli_help():
    """`python <script>.py --help` exits 0 for all six scripts (argparse formats help with '%': one stray '%' in a
    config comment crashed probe.py --help), and the flags the README and docstrings name are listed."""
    want = {"pretrain.py": ["--readout ", "--readout_only", "--readout_context", "--objective"],
            "probe.py": ["--probe ", "--probe_pos", "--export_features", "--label_frac"],
            "data.py": [], "masks.py": [], "corrupt.py": [], "test_all.py": ["python test_all.py"]}
    for path, flags in want.items():
        code, out, err = run_script(path, ["--help"])
        assert code == 0 and out.strip() and all(f in out for f in flags), (path, code, err[-500:])


# -----------------------------------------------------------------------------
# runner

if __name__ == "__main__":
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__.strip())
        sys.exit(0)
    words = sys.argv[1:]
    tests = [(n, f) for n, f in list(globals().items())
             if n.startswith("test_") and callable(f) and (not words or any(w in n for w in words))]
    passed = failed = 0
    t_start = time.time()
    for name, fn in tests:
        t0 = time.time()
        try:
            fn()
            passed += 1
            print(f"ok    {name} ({time.time() - t0:.1f}s)", flush=True)
        except Exception:
            failed += 1
            traceback.print_exc()
            print(f"FAIL  {name} ({time.time() - t0:.1f}s)", flush=True)
    print(f"total {time.time() - t_start:.1f}s")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed or not tests else 0)
