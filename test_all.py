"""
All tests of nano-EchoJEPA, CPU only, under a minute on 2 cores.

    python test_all.py            # every test; last line "N passed, M failed"
    python test_all.py mask ema   # only tests whose name contains one of the words
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
import math
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


def script_functions(path, names, **globs):
    """Top-level functions of a script (read top to bottom, not importable) executed against the given globals,
    so the exact code the script runs is what gets tested."""
    tree = ast.parse(open(os.path.join(HERE, path)).read())
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
        with torch.device("meta"):
            enc, pred = Encoder(cfg), build_predictor(cfg)
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
             fused_ema=True)
    c.update(cfg_kw)
    return script_functions("pretrain.py", ["get_lr", "get_ema", "jepa_loss", "train_step", "step_flops"],
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



TINY_RUN = ["--crop", "64", "--frames", "4", "--batch_size", "2", "--num_workers", "0", "--log_interval", "1"]


def run_script(path, args):
    """Run a script in this process (torch is already imported: ~2 s cheaper than a subprocess).
    Returns (exit code, stdout, stderr)."""
    import contextlib
    import io
    import runpy
    import signal
    out, err, code = io.StringIO(), io.StringIO(), 0
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    argv = sys.argv
    sys.argv = [path, *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(os.path.join(HERE, path), run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
            err.write(e.code)
    finally:
        sys.argv = argv
        for s, h in handlers.items():
            signal.signal(s, h)
    return code, out.getvalue(), err.getvalue()


def logged_losses(folder):
    return {int(line.split()[1]): line.split("| loss ")[1].split()[0]
            for line in open(os.path.join(folder, "log.txt")) if line.startswith("step")}


def test_pretrain_run_and_checkpoint_roundtrip():
    with tempfile.TemporaryDirectory() as d:
        rc, out, err = run_script("pretrain.py", [*TINY_RUN, "--steps", "4", "--ckpt_interval", "2", "--out_dir", d])
        assert rc == 0, err
        ck = torch.load(os.path.join(d, "ckpt.pt"), weights_only=False)
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
        cases = [(["--model", "vitx"], "invalid choice"), (["--crop", "100"], "multiple of the 16"),
                 (["--frames", "15"], "must be even"), (["--init", os.path.join(d, "nope.pt")], "no such file"),
                 (["--init", os.path.join(d, "official.pt"), "--model", "vitt"], "shape mismatches"),
                 (["--init", os.path.join(d, "garbage.pt")], "cannot read"),
                 (["--crop", "32", "--frames", "2"], "cannot fit"),
                 (["--out_dir", os.path.join(d, "afile", "sub")], "not writable"),
                 (["--resume", "--out_dir", os.path.join(d, "empty")], "no checkpoint")]
        for args, want in cases:
            rc, out, err = run_script("pretrain.py", [*TINY_RUN, "--steps", "1", "--out_dir", os.path.join(d, "c"),
                                                      *args])
            last = err.strip().splitlines()[-1]
            assert rc != 0 and want in last and "error" in last and "Traceback" not in err, (want, err[-500:])
        # the same through a real subprocess: one line, no traceback
        rc, out, err = run(["pretrain.py", "--crop", "100"])
        assert rc == 2 and "Traceback" not in err and err.strip().splitlines()[-1].endswith("16-pixel patch size")


def test_preemption_and_exact_resume():
    """SIGTERM mid-run: the run saves at the next step boundary and exits 0; --resume then continues bit for bit
    like an uninterrupted run (data, masks and schedules are pure functions of the step)."""
    import signal
    with tempfile.TemporaryDirectory() as d:
        a, b = os.path.join(d, "a"), os.path.join(d, "b")
        args = [*TINY_RUN, "--steps", "8", "--ckpt_interval", "100"]
        p = subprocess.Popen([sys.executable, "pretrain.py", *args, "--out_dir", a], cwd=HERE, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "PYTHONUNBUFFERED": "1",
                                  "OMP_NUM_THREADS": str(torch.get_num_threads())})
        for line in p.stdout:  # wait until training is really under way
            if line.startswith("step      2"):
                p.send_signal(signal.SIGTERM)
                break
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0 and "received signal" in out, (out, err[-1000:])
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
        child = f"""
import os, sys, torch, types
sys.path.insert(0, {HERE!r}); os.chdir({HERE!r})
from test_all import script_functions
big = {{"w": torch.randn(20_000_000)}}  # 80 MB: each save takes long enough to be killed inside
ns = script_functions("pretrain.py", ["save_checkpoint"], torch=torch, os=os, ckpt_path={os.path.join(d, 'ckpt.pt')!r},
    raw_encoder=torch.nn.Linear(2, 2), raw_predictor=torch.nn.Linear(2, 2), target_encoder=torch.nn.Linear(2, 2),
    opt=types.SimpleNamespace(state_dict=lambda: big), cfg=types.SimpleNamespace(compile=False, batch_size=1),
    global_batch=1, dataset=[0], world_size=1, get_lr=lambda it: 0.0, asdict=lambda c: {{}}, fail=print)
i = 0
while True:
    ns["save_checkpoint"](i, 0.0); i += 1
    print(i, flush=True)
"""
        p = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
        for line in p.stdout:
            if int(line) >= 3:
                time.sleep(0.05)  # somewhere inside the next save
                p.send_signal(signal.SIGKILL)
                break
        p.wait()
        ck = torch.load(os.path.join(d, "ckpt.pt"), weights_only=False)
        assert ck["step"] >= 2 and ck["opt"]["w"].shape == (20_000_000,)


def test_ddp_equivalence_gloo():
    """2 processes x batch 1 (gloo) == 1 process x batch 2: same data, masks, loss and updated weights."""
    with tempfile.TemporaryDirectory() as d:
        common = ["--crop", "64", "--frames", "4", "--num_workers", "0", "--log_interval", "1", "--steps", "2"]
        p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              "pretrain.py", *common, "--batch_size", "1", "--out_dir", os.path.join(d, "ddp")],
                             cwd=HERE, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        rc, out, err = run_script("pretrain.py", [*common, "--batch_size", "2", "--out_dir", os.path.join(d, "one")])
        assert rc == 0, err
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-2000:]
        c1, c2 = (torch.load(os.path.join(d, x, "ckpt.pt"), weights_only=False) for x in ("one", "ddp"))
        assert c2["world_size"] == 2 and c2["step"] == 2
        l1, l2 = logged_losses(os.path.join(d, "one")), logged_losses(os.path.join(d, "ddp"))
        assert all(abs(float(l1[s]) - float(l2[s])) < 1e-5 for s in (1, 2)), (l1, l2)
        for key in ("encoder", "predictor", "target_encoder"):
            diff = max((v - c2[key][n]).abs().max().item() for n, v in c1[key].items())
            assert diff < 1e-5, (key, diff)


# -----------------------------------------------------------------------------
# runner

if __name__ == "__main__":
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
