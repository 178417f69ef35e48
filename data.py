"""
Data for nano-EchoJEPA: a synthetic echocardiography generator (the default data) and loaders for real echo.

    python data.py --out data_synth --n 200      # EchoNet-Dynamic layout + V-JEPA CSVs (+ pediatric/), 6 views each
    python data.py --out data_synth --workers 2  # the same, rendered by 2 processes
    python data.py --preview --out .             # preview.mp4 and preview.png: views x EF values

A synthetic video (SPEC §6, NOTES-data §1) is made in four steps, one section each: the patient (labels, cardiac
cycle), the anatomy of the view (backscatter in dB), the nuisance (sector, depth, probe pose, gain, TGC: per clip)
and the acoustics (speckle through a PSF on a polar grid, scan conversion, log compression). Then video I/O, clip
transforms, the readers of real data (SPEC §5), the datasets and writing to disk.
"""
import argparse
import contextlib
import csv
import functools
import math
import multiprocessing
import os

import av
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

VIEWS = ["A4C", "A2C", "A3C", "A5C", "PLAX", "PSAX"]  # label map: class id = index (swap in a 13-class list)
RVSP_VIEWS = ["A4C", "PSAX", "PLAX"]  # views of one multi-view study (rvsp task), RV visible in all three
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SYNTH_FPS, SYNTH_FRAMES = 50.0, 128  # a synthetic video: 2.56 s at 50 fps, like a short EchoNet clip
SPLIT_BASE = {"train": 0, "val": 10**9, "test": 2 * 10**9}  # synthetic patient index offsets: splits never overlap


# ----- the patient: labels and the cardiac cycle -----
def synth_patient(seed, index, domain="adult", ef=None, rvsp=None):
    """Per-patient parameters and labels, shared by every view and clip of one synthetic study (cheap: no pixels)."""
    ped = domain == "pediatric"
    rng = np.random.default_rng([seed, index, ped])
    ef = float(np.clip(rng.normal(61.0, 10.4) if ped else rng.normal(55.8, 12.4), 10, 85)) if ef is None else ef
    rvsp = float(np.clip(18 + rng.gamma(2.0, 7.0), 15, 90)) if rvsp is None else rvsp
    size = (0.5 if ped else 1.0) * rng.normal(1, 0.06)  # heart size relative to the nominal adult (4.5 cm half-length)
    a_ed, b_ed = 4.5 * size * rng.uniform(0.95, 1.05), 2.0 * size * rng.uniform(0.9, 1.1)  # LV cavity, cm
    s_long = float(np.clip(0.02 + 0.18 * ef / 100 + rng.normal(0, 0.01), 0.03, 0.17))  # longitudinal shortening
    a_es = (1 - s_long) * a_ed
    b_es = b_ed * math.sqrt((1 - ef / 100) * a_ed / a_es)  # V = 4/3 pi a b^2  =>  ESV/EDV = 1 - EF exactly
    edv, esv = 4 / 3 * math.pi * a_ed * b_ed**2, 4 / 3 * math.pi * a_es * b_es**2  # mL (cm^3)
    hr = rng.uniform(80, 140) if ped else rng.uniform(50, 110)
    missing = RVSP_VIEWS[rng.integers(len(RVSP_VIEWS))] if rng.random() < 0.15 else None
    # the LV outline's irregularity (widen), fixed over the cycle: ED and ES are similar shapes, ESV/EDV = 1 - EF
    shape = rng.normal(0, [0.04, 0.05, 0.06, 0.05, 0.05], (2, 5)).astype(np.float32)
    return dict(EF=ef, EDV=edv, ESV=esv, rvsp=rvsp, hr=hr, systole=rng.uniform(0.35, 0.40), size=float(size),
                lv=tuple(map(float, (a_ed, b_ed, a_es, b_es))), myo=rng.uniform(0.9, 1.1), missing=missing,
                lv_shape=shape, study=f"{'P' if ped else 'S'}{index:06d}", domain=domain)


def cardiac_cycle(phase, systole):
    """Contraction s (0 = end-diastole, 1 = end-systole) and valve openings in [0, 1] at phase in [0, 1): cosine
    systole, cosine filling over a quarter cycle, diastasis (NOTES-data §1.4). Mitral and tricuspid valves open after
    relaxation, half-close in diastasis, reopen for the atrial kick, shut by phase 0.95; the aortic valve opens in
    ejection."""
    ramp = lambda v: np.clip(v, 0, 1)
    s = np.where(phase < systole, 0.5 * (1 - np.cos(np.pi * phase / systole)),
                 0.5 * (1 + np.cos(np.pi * ramp((phase - systole) / 0.25))))
    diastasis = ramp((phase - systole - 0.3) / 0.1) * ramp((0.85 - phase) / 0.05)
    inflow = ramp((phase - systole - 0.03) / 0.06) * ramp((0.95 - phase) / 0.04) * (1 - 0.5 * diastasis)
    outflow = ramp((phase - 0.02) / 0.04) * ramp((systole - 0.01 - phase) / 0.04)
    return s, inflow, outflow


# ----- anatomy: the chambers, walls and valves of one view, as backscatter in dB -----
# Per view: (kind, x, y, a, b, psi) in units of the imaging depth (15 cm for an adult), apex of the fan at (0, 0), y
# pointing down; a = half-length along the long axis, b = half-width, psi = long-axis angle from vertical (towards
# +x); the LV's a and b come from the patient. Each is a blood cavity in a myocardial shell, painted in order, the LV
# last (its shell forms the septa). A ventricle is open at its base (u = along / a > BASE, u = -1 at the apex): its
# atrium shows through the valve. The aorta's u = -1 end meets the LV.
LAYOUTS = {
    "A4C": [("ra", -0.235, 0.71, 0.14, 0.095, -0.25), ("la", 0.082, 0.746, 0.14, 0.10, 0.15),
            ("rv", -0.185, 0.49, 0.24, 0.10, -0.2), ("lv", 0.055, 0.47, 0.30, 0.13, 0.08)],
    "A2C": [("la", 0.045, 0.765, 0.16, 0.13, 0.05), ("lv", 0.03, 0.47, 0.30, 0.13, 0.05)],
    "A3C": [("la", -0.01, 0.77, 0.15, 0.12, -0.15), ("ao", 0.19, 0.76, 0.14, 0.06, 0.8),
            ("lv", 0.02, 0.47, 0.30, 0.13, 0.02)],
    "A5C": [("ra", -0.24, 0.73, 0.16, 0.11, -0.25), ("la", 0.12, 0.78, 0.15, 0.12, 0.3),
            ("rv", -0.185, 0.49, 0.24, 0.10, -0.2), ("ao", -0.015, 0.80, 0.15, 0.06, -0.3),
            ("lv", 0.055, 0.47, 0.30, 0.13, 0.08)],
    "PLAX": [("rv", 0.0, 0.24, 0.22, 0.07, 1.65), ("la", 0.28, 0.68, 0.13, 0.12, 1.3),
             ("ao", 0.30, 0.42, 0.17, 0.07, 1.45), ("lv", -0.08, 0.52, 0.30, 0.13, 1.62)],
    "PSAX": [("rv", -0.13, 0.40, 0.21, 0.08, 2.25), ("lvsax", 0.02, 0.56, 0.13, 0.13, 0.67)],
}
BASE = dict(lv=0.72, rv=0.68)  # ventricular base planes (mitral / tricuspid annulus), in u = along / a
WALL = dict(rv=0.025, ra=0.016, la=0.016, ao=0.02)  # wall thickness in depth units (the LV's follows the cycle)
# backscatter, dB below the display's white at zero gain (50 dB range): blood and the darkest tissue at the display
# floor, myocardium mid-grey, the specular annulus and the outer interfaces (OUTER: pericardium...) near white
DB = dict(blood=-47.0, tissue=-58.0, myocardium=-34.0, leaflet=-28.0, specular=-10.0, haze=-38.0)
OUTER = dict(lv=-10.0, lvsax=-10.0, rv=-19.0, la=-14.0, ra=-14.0, ao=-17.0)


def widen(coef, u):
    """An outline's relative widening at u = along / a, sum_k coef[k] u^k (Horner); coef (K, ...) per side."""
    w = coef[-1]
    for c in coef[-2::-1]:
        w = w * u + c
    return w


def texture(rng, geo, psf):
    """A smooth random field (P,), static over a clip: a crop of a wide-PSF speckle bank, standardised over the fan."""
    bank = speckle_bank(8, 256, psf)
    k, i, j = rng.integers(len(bank)), rng.integers(0, 256 - NR), rng.integers(0, 256 - NT)
    field = scan_convert(bank[k, i:i + NR, j:j + NT].real.ravel(), geo)
    return (field - field.mean()) / field.std()


def paint_leaflet(db, x, y, hx, hy, dx, dy, length, width, level):
    """Max a thin bright ellipse into db (T, N) at pixels (x, y), from the hinge (hx, hy) along (dx, dy), (T, 1)."""
    ex, ey = x - (hx + dx * length / 2), y - (hy + dy * length / 2)
    q = ((ex * dx + ey * dy) / (length / 2)) ** 2 + ((ex * dy - ey * dx) / width) ** 2
    np.maximum(db, level - 12 * q, out=db)


def anatomy(view, pat, geo, rng, s, inflow, outflow, acq):
    """Backscatter in dB (T, P) of one view at contraction s and valve openings inflow/outflow, all (T, 1), and the
    drawn LV (for its tracings), placed by the clip's acquisition acq (scale, tilt, shift, LV axes)."""
    x, y, r, px = geo["x"], geo["y"], geo["r"], geo["px"]
    s, frame_of = np.unique(s, return_inverse=True)  # chambers are drawn once per distinct contraction (diastasis)
    s, frame_of = s[:, None].astype(np.float32), frame_of.ravel()  # (S, 1)
    # tissue: dark (the darkest at the display floor) in large patches, with bright streaks along the arcs
    streaks, patches = texture(rng, geo, (1.5, 8.0)), texture(rng, geo, (24.0, 24.0))
    db = np.empty((len(s), len(x)), np.float32)
    db[:] = np.maximum(DB["blood"] - 3, DB["tissue"] + 16 * patches + 10 * np.clip(streaks - 1.0, 0, 1.2))
    rv_load = min(max((pat["rvsp"] - 15) / 45, 0), 1.7)  # pressure load: RV/RA dilate, septum flattens
    a_ed, b_ed, a_es, b_es = acq["lv"]
    la, lb = a_ed + (a_es - a_ed) * s, b_ed + (b_es - b_ed) * s  # (S, 1) LV half-axes, depth units
    myo = math.pi * ((a_ed + 0.065 * acq["scale"]) * (b_ed + 0.065 * acq["scale"]) - a_ed * b_ed) * pat["myo"]
    h = (-(la + lb) + np.sqrt((la + lb) ** 2 + 4 * myo / math.pi)) / 2  # wall thickens: myocardial area constant
    # the LV apex stays and its annulus moves by `move` along the long axis (< 0 in systole); the RV's annulus moves
    # with it, and each atrium keeps its far end while its near end follows the annulus
    move = (1 + BASE["lv"]) * (la - a_ed)  # (S, 1)
    c, sn, scale, drawn = math.cos(acq["tilt"]), math.sin(acq["tilt"]), acq["scale"], {}
    for kind, cx, cy, a, b, psi in LAYOUTS[view]:
        cx, cy = scale * (c * cx + sn * cy) + acq["shift"][0], scale * (c * cy - sn * cx) + acq["shift"][1]
        ux, uy = math.sin(psi + acq["tilt"]), math.cos(psi + acq["tilt"])  # long-axis direction
        if kind == "lv":
            a0, b0, a, b, wall, slide, shape = a_ed, b_ed, la, lb, h, la - a_ed, pat["lv_shape"].copy()
        elif kind == "lvsax":  # a short-axis ring, D-shaped under RV pressure
            a0, b0, a, b, wall, slide = b_ed * (1 - 0.25 * rv_load), b_ed, lb * (1 - 0.25 * rv_load), lb, h, 0
            shape = rng.normal(0, 0.03, (2, 5)).astype(np.float32)
        else:
            j, load = rng.uniform(0.9, 1.1, 2).tolist(), rv_load if kind in ("rv", "ra") else 0
            a0, b0 = a * j[0] * scale * (1 + 0.2 * load), b * j[1] * scale * (1 + 0.3 * load)
            a, b, wall, slide = a0, b0, WALL[kind] * scale, 0
            shape = rng.normal(0, 0.06, (2, 5)).astype(np.float32)
            if kind == "rv":  # apex fixed, base moving with the LV's; the free wall moves in, thicker under pressure
                slide = move / (1 + BASE["rv"])
                a, b, wall = a0 + slide, b0 * (1 - 0.15 * s), wall * (1 + 0.8 * load)
            elif kind in ("la", "ra"):  # far end fixed, near end following the annulus
                slide = move / 2
                a = a0 - slide
        if kind in ("lv", "lvsax") and "rv" in drawn:  # the septum: flattened by RV pressure, brighter (below)
            septal = int((drawn["rv"][0] - cx) * uy - (drawn["rv"][1] - cy) * ux > 0)  # the RV's side
            shape[septal, 0] -= 0.1 * rv_load
        base = BASE.get(kind) if kind == "lv" or view in ("A4C", "A5C") else None
        drawn[kind] = (cx, cy, ux, uy, a, b, slide, shape, base)
        # only the pixels near the structure are computed: sub (S, N) of db
        along, across = (x - cx) * ux + (y - cy) * uy, (x - cx) * uy - (y - cy) * ux  # (P,)
        margin = np.max(wall) + 8 * px
        near = np.flatnonzero((np.abs(along) < np.max(np.abs(slide)) + np.max(a) + margin)
                              & (np.abs(across) < 1.3 * np.max(b) + margin))
        along, across, stk, xs, ys, rs = (v[near] for v in (along, across, streaks, x, y, r))
        sub = db[:, near]
        level = DB["myocardium"] - (5 if kind in ("la", "ra") else 0) + patches[near] + stk  # varies along walls
        if kind in ("lv", "lvsax") and "rv" in drawn:
            level = level + 10 * ((across > 0) == septal)
        # signed distance to the outline (< 0 inside), (rho - 1) / |grad rho| with rho the outline-normalised radius
        u = (along - slide) / a  # (S, N)
        bw = b * (1 + widen(shape[(across > 0).astype(int)].T[:, None], u))  # the outline's half-width at u
        v = across / bw
        rho = np.sqrt(u * u + v * v)
        d = (rho - 1) * rho / (np.sqrt((u / a) ** 2 + (v / bw) ** 2) + 1e-6)
        if base is not None:
            d[u > base] = 1.0  # open towards the atrium
            wall = wall * np.clip(1 + 0.45 * u, 0.55, 1)  # the apex is thinner
        for edge, inside in ((wall, level), (0, DB["blood"])):  # myocardium, then blood, edges ramped over 1.5 px
            sub += (inside - sub) * np.clip(0.5 - (d - edge) / (1.5 * px), 0, 1)
        # the outer wall is a specular interface (epicardium, pericardium; brighter with depth): its amplitude ~ cos^2
        # of the angle between the outline's normal (at end-diastole) and the beam, so walls along the beam drop out
        normal_a, normal_c = along / a0**2, across / b0**2
        cos = ((xs * ux + ys * uy) * normal_a + (xs * uy - ys * ux) * normal_c) / (rs * np.hypot(normal_a, normal_c))
        angle = 20 * np.log10(np.maximum(cos**2, 0.03))  # (N,) dB
        peak = OUTER[kind] + 10 * (rs - 0.5) + 2 * stk + angle
        np.maximum(sub, peak - 10 * ((d - wall - 2.5 * px) / (3.5 * px)) ** 2, out=sub)
        db[:, near] = sub
    db = db[frame_of]  # (T, P)
    # valves: two leaflets hinged at the annulus, closed across it (bowing slightly into the atrium), open towards
    # the apex (mitral, tricuspid) or into the aorta (aortic valve); bright annulus points just outside the hinges
    for kind, opening, at, into in (("lv", inflow, BASE["lv"], -1), ("rv", inflow, BASE["rv"], -1),
                                    ("ao", outflow, -0.6, 1)):
        if kind not in drawn or kind != "ao" and drawn[kind][8] is None:
            continue
        cx, cy, ux, uy, a, b, slide, shape, base = (v[frame_of] if np.shape(v)[1:] == (1,) else v
                                                    for v in drawn[kind])  # (S, 1) -> (T, 1)
        half = [b * math.sqrt(1 - at**2) * (1 + w) for w in widen(shape.T, at)]  # to the two annulus points
        mx, my = cx + (slide + a * at) * ux, cy + (slide + a * at) * uy  # annulus centre, (T, 1) or scalars
        reach = 1.4 * np.max(half) + 8 * px + np.max(np.hypot(mx - np.mean(mx), my - np.mean(my)))
        near = np.flatnonzero(np.hypot(x - np.mean(mx), y - np.mean(my)) < reach)
        sub, xs, ys, beta = db[:, near], x[near], y[near], opening * 1.5 - 0.25  # beta: angle from closed, radians
        for k, sign in ((0, -1), (1, 1)):  # the leaflet, then the annulus point on each side
            hx, hy, cos, sin = mx + sign * half[k] * uy, my - sign * half[k] * ux, np.cos(beta), np.sin(beta)
            paint_leaflet(sub, xs, ys, hx, hy, -sign * uy * cos + into * ux * sin, sign * ux * cos + into * uy * sin,
                          half[k] * (1.1 if k else 1.0), px, DB["leaflet"])
            paint_leaflet(sub, xs, ys, hx + sign * px * uy, hy - sign * px * ux, sign * uy, -sign * ux, 3 * px, px,
                          DB["specular"])
        db[:, near] = sub
    return db, drawn.get("lv")


def lv_tracings(lv, s, pat, acq, geo, size, fps):
    """VolumeTracings rows (X1, Y1, X2, Y2, Frame) in pixels of the drawn LV at the first ED and the ES after it: the
    long axis (apex to base centre), then 20 method-of-discs chords (NOTES-data §3.1). {} if there is no ED -> ES."""
    ed = np.flatnonzero((s[:-1] == 0) & (s[1:] > 0))  # last diastasis frames before systole
    systole_frames = int(fps * 60 / pat["hr"] * pat["systole"]) + 2
    if lv is None or not len(ed) or ed[0] + systole_frames >= len(s):
        return {}
    es = ed[0] + int(np.argmax(s[ed[0]:ed[0] + systole_frames]))  # the frame closest to s = 1
    (cx, cy, ux, uy), shape, base = lv[:4], lv[7], lv[8]
    a_ed, b_ed, a_es, b_es = acq["lv"]
    px = lambda x, y: (x * geo["r_max"] + (size - 1) / 2, y * geo["r_max"] - 0.5)  # depth units -> pixels
    rows = []
    for f in (ed[0], es):
        a, b = a_ed + (a_es - a_ed) * s[f], b_ed + (b_es - b_ed) * s[f]
        mx, my = cx + (a - a_ed) * ux, cy + (a - a_ed) * uy  # the centre moves, the apex stays
        rows.append((*px(mx - a * ux, my - a * uy), *px(mx + base * a * ux, my + base * a * uy), f))
        for u in -1 + (np.arange(20) + 0.5) * (1 + base) / 20:  # disc centres from the apex (u = -1) to the base
            w0, w1 = b * math.sqrt(1 - u**2) * (1 + widen(shape.T, u))  # half-widths across < 0 and > 0
            x, y = mx + u * a * ux, my + u * a * uy
            rows.append((*px(x - w0 * uy, y + w0 * ux), *px(x + w1 * uy, y - w1 * ux), f))
    return dict(ed_frame=int(ed[0]), es_frame=int(es), tracings=rows)


# ----- nuisance: what the sonographer and the scanner change from clip to clip -----
TGC = (-5.0, -2.0, 2.0, 3.0, 3.0)  # time-gain compensation in dB at depths 0, 1/4, 1/2, 3/4, 1 (jittered per clip)


def acquisition(rng, pat, ped, size):
    """The fan (sector width, depth) and acq: depth imaged (cm), the probe's pose (scale, tilt, shift, foreshortening),
    the LV's half-axes in depth units, speckle correlation rho, gain, TGC and the clip's start in the cycle."""
    geo = fan_geometry(size, int(rng.integers(37, 44)), int(rng.integers(90, 98)))
    depth = rng.uniform(9, 11) if ped else rng.uniform(14, 17)  # cm imaged
    acq = dict(depth=depth, scale=15 / depth * pat["size"], tilt=min(max(rng.normal(0, 0.05), -0.08), 0.08),
               shift=rng.normal(0, 0.015, 2).tolist(), shorten=rng.uniform(0.88, 1.0))  # Python floats: float32 maths
    a_ed, b_ed, a_es, b_es = (v / depth for v in pat["lv"])
    acq["lv"] = (a_ed * acq["shorten"], b_ed, a_es * acq["shorten"], b_es)  # foreshortening: EF unchanged
    acq.update(rho=rng.uniform(0.95, 0.98), gain=rng.normal(0, 1.5), tgc=np.array(TGC) + rng.normal(0, 1.0, len(TGC)),
               start=rng.random())
    return geo, acq


# ----- acoustics: speckle through the PSF on a polar grid, scan conversion, TGC, log compression -----
NR, NT = 160, 128  # polar grid: depth samples x scan lines (NOTES-data §1.1)
LOOKS, CONTRAST = 2, 1.2  # speckle looks compounded in the display; gain of the log-speckle in the display
# CALIBRATION: DB, OUTER, TGC, LOOKS and CONTRAST are fitted to 16 image statistics of 9 real EchoNet-Dynamic A4C
# clips (../shared/realism/echo_stats.py): 16/16 inside the real range at --n 12 and 24.


@functools.lru_cache(maxsize=4)
def speckle_bank(n=16, size=256, psf=(1.0, 0.7)):
    """Complex Gaussian fields (n, depth, line) through an anisotropic Gaussian PSF (sigma in samples), E|z|^2 = 1:
    a frame's fresh speckle is a random crop (exactly Rayleigh, and no filtering per frame)."""
    rng = np.random.default_rng(1234)
    z = rng.standard_normal((n, size, size), np.float32) + 1j * rng.standard_normal((n, size, size), np.float32)
    k = np.fft.fftfreq(size)
    z = np.fft.ifft2(np.fft.fft2(z) * np.exp(-2 * np.pi**2 * (psf[0] ** 2 * k[:, None] ** 2 + psf[1] ** 2 * k**2)))
    return (z / np.sqrt(np.mean(np.abs(z) ** 2))).astype(np.complex64)


@functools.lru_cache(maxsize=256)
def fan_geometry(size, half_angle_deg, depth_pct):
    """Scan conversion of one fan: in-sector pixels, their 4 polar neighbours and weights, positions in depth units."""
    theta_max, r_max = math.radians(half_angle_deg), size * depth_pct / 100
    i, j = np.mgrid[0:size, 0:size]
    x, y = (j - (size - 1) / 2) / r_max, (i + 0.5) / r_max  # apex just above the top-centre pixel
    r, theta = np.hypot(x, y), np.arctan2(x, y)
    inside = np.flatnonzero((r <= 1) & (np.abs(theta) <= theta_max))
    x, y, r = (v.ravel()[inside].astype(np.float32) for v in (x, y, r))  # (P,) for the P in-sector pixels
    ri, ti = r * (NR - 1), (theta.ravel()[inside] / theta_max + 1) / 2 * (NT - 1)  # fractional polar coordinates
    r0, t0 = np.minimum(ri.astype(int), NR - 2), np.minimum(ti.astype(int), NT - 2)
    fr, ft = (ri - r0).astype(np.float32), (ti - t0).astype(np.float32)
    idx = r0 * NT + t0 + np.array([0, 1, NT, NT + 1])[:, None]  # (4, P) flat polar indices of the neighbours
    w = np.stack([(1 - fr) * (1 - ft), (1 - fr) * ft, fr * (1 - ft), fr * ft])  # (4, P) bilinear weights
    return dict(inside=inside, idx=idx, w=w, r_max=r_max, x=x, y=y, r=r, px=1 / r_max)  # px: a pixel, depth units


def scan_convert(polar, geo):
    """(..., NR * NT) values on the polar grid -> (..., P) at the in-sector pixels, bilinear."""
    corners = np.take(polar, geo["idx"].ravel(), axis=-1).reshape(polar.shape[:-1] + geo["idx"].shape)  # (..., 4, P)
    return sum(corners[..., k, :] * w for k, w in enumerate(geo["w"]))


def acoustics(db, geo, acq, rng, frame_idx, fps, envelope=False):
    """Grey levels (T, P) of the in-sector pixels from backscatter db (T, P) of the frames frame_idx; envelope=True:
    the amplitude of one speckle look before log compression (Rayleigh; for the tests)."""
    # near-field haze (chest-wall clutter), time-gain compensation and gain
    r, pool = geo["r"], db < DB["blood"] + 2  # (T, P) the blood pools (and the darkest tissue)
    db += acq["gain"] + np.interp(r, np.linspace(0, 1, len(TGC)), acq["tgc"]).astype(np.float32)
    np.copyto(db, DB["blood"], where=pool)  # the pools stay at the display floor (noise), whatever the gain
    np.maximum(db, DB["haze"] - 250 * r, out=db)
    # speckle: LOOKS independent fields, each AR(1) in time on the polar grid (rho per 1/50 s), scan-converted
    bank = speckle_bank()
    pick = rng.integers(0, [len(bank), bank.shape[1] - NR, bank.shape[2] - NT], (len(frame_idx), LOOKS, 3))
    rho = acq["rho"] ** (np.diff(frame_idx, prepend=frame_idx[0]) * SYNTH_FPS / fps)  # between rendered frames
    z = np.empty((len(frame_idx), LOOKS, NR, NT), np.complex64)
    for t, picks in enumerate(pick):
        for look, (k, i, j) in enumerate(picks):
            z[t, look] = bank[k, i:i + NR, j:j + NT]  # fresh speckle
        if t:
            z[t] *= math.sqrt(1 - rho[t] ** 2)
            z[t] += rho[t] * z[t - 1]
    zc = scan_convert(z.reshape(len(frame_idx), LOOKS, NR * NT), geo)  # (T, LOOKS, P) complex, still Gaussian
    power = zc.real**2 + zc.imag**2
    if envelope:  # amplitude = sqrt(backscatter power) x Rayleigh speckle of one look
        return 10 ** (db / 20) * np.sqrt(power[:, 0])
    # display: looks compounded (as scanners, and the 112-px downsampling of real video); pool speckle drifts a pixel
    # per 4/50 s (flow); log compression over 50 dB; a soft floor maps the pools' noise to grey 0..8, not to black
    power = power.mean(1)
    drift = rng.integers(power.shape[1]) + (frame_idx * SYNTH_FPS / fps / 4).astype(int)  # (T,)
    power = np.where(pool, np.stack([np.roll(p, k) for p, k in zip(power, drift)]), power)
    grey = (db + CONTRAST * 10 * np.log10(power) + 50) * (255 / 50)
    return np.clip(np.maximum(grey, 8 * np.exp(np.minimum(grey - 8, 0) / 16)) + 0.5, 0, 255)


# ----- one synthetic video: patient -> nuisance -> anatomy -> acoustics -----
def synth_video(seed, index, view=None, domain="adult", frames=SYNTH_FRAMES, fps=SYNTH_FPS, size=112, clip=0,
                frame_idx=None, ef=None, rvsp=None, envelope=False):
    """uint8 (T, size, size) video of `frames` frames at `fps` and its labels, deterministic per (seed, index, view,
    clip); index is the patient (its views form one study). frame_idx: render only those frames. envelope: acoustics."""
    pat = synth_patient(seed, index, domain, ef, rvsp)
    if view is None:  # a random view, chosen so that synth_video(s, i) == synth_video(s, i, <that view>)
        view = VIEWS[np.random.default_rng([seed, index, 7]).integers(len(VIEWS))]
    view_id, ped = VIEWS.index(view), domain == "pediatric"
    rng = np.random.default_rng([seed, index, ped, view_id, clip])
    geo, acq = acquisition(rng, pat, ped, size)
    frame_idx, inverse = np.unique(np.arange(frames) if frame_idx is None else frame_idx, return_inverse=True)
    phase = (np.arange(frames) / fps * pat["hr"] / 60 + acq["start"]) % 1
    s_all, inflow, outflow = cardiac_cycle(phase, pat["systole"])
    cycle = (v[frame_idx][:, None].astype(np.float32) for v in (s_all, inflow, outflow))  # (T, 1), rendered frames
    db, lv = anatomy(view, pat, geo, rng, *cycle, acq)
    out = np.zeros((len(frame_idx), size * size), np.float32 if envelope else np.uint8)
    out[:, geo["inside"]] = acoustics(db, geo, acq, rng, frame_idx, fps, envelope)
    labels = dict(EF=pat["EF"], EDV=pat["EDV"], ESV=pat["ESV"], rvsp=pat["rvsp"], hr=pat["hr"], view=view,
                  view_id=view_id, study=pat["study"], domain=domain, fps=fps, frames=frames)
    labels.update(lv_tracings(lv, s_all, pat, acq, geo, size, fps))
    return out.reshape(-1, size, size)[inverse], labels  # (T, size, size) in the order of frame_idx


# ----- video I/O (PyAV) -----
class BadVideo(ValueError):
    """A video that cannot be decoded (truncated, no frames, not a video). Datasets skip it, with a log line."""


def to_gray(frame):
    """(H, W) uint8 grey of a decoded frame. For full-range YUV (MJPEG) and grey frames the luma plane is the grey
    image, equal to to_ndarray(format="gray") but 3x faster per clip (no converter is built for every frame)."""
    if frame.format.name not in ("yuvj420p", "yuvj422p", "yuvj444p", "gray"):
        return frame.to_ndarray(format="gray")
    plane = frame.planes[0]
    return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, :plane.width].copy()  # rows padded


def read_video(path, pick=None):
    """Grey uint8 (T, H, W) and fps; pick(n_frames, fps) -> indices of any shape S gives S + (H, W), and intra-only
    codecs (MJPEG) decode only those frames. Raises BadVideo naming the file. Opened per call, never held open."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps, n = float(stream.average_rate or SYNTH_FPS), stream.frames
            if pick is None or n <= 0:  # whole video (also when the container does not know its length, e.g. mkv)
                video = [to_gray(f) for f in container.decode(stream)]
                if not video:
                    raise BadVideo(f"{path}: no frames")
                return np.stack(video)[... if pick is None else pick(len(video), fps)], fps
            idx = pick(n, fps)
            want, got = set(idx.ravel().tolist()), {}
            intra = stream.codec_context.codec.intra_only  # every packet is a whole frame: decode only those wanted
            items = (p for p in container.demux(stream) if p.size) if intra else container.decode(stream)
            for i, item in enumerate(items):
                if i in want:
                    got[i] = to_gray(item.decode()[0] if intra else item)
                if len(got) == len(want):
                    break
    except (av.error.FFmpegError, IndexError, OSError) as e:
        raise BadVideo(f"{path}: {type(e).__name__}: {e}") from e
    if len(got) < len(want):
        raise BadVideo(f"{path}: truncated, frame {max(want - set(got))} of {n} is missing")
    return np.stack([got[i] for i in idx.ravel()]).reshape(idx.shape + got[idx.flat[0]].shape), fps


def write_video(path, frames, fps, codec="mjpeg"):
    """Grey (T, H, W) or RGB (T, H, W, 3) uint8: mjpeg .avi as EchoNet, ffv1 lossless, libx264 .mp4, png (1 frame)."""
    fmt = "rgb24" if frames.ndim == 4 else "gray"
    with av.open(str(path), "w", format="image2" if codec == "png" else None) as container:
        stream = container.add_stream(codec, rate=round(fps))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = {"mjpeg": "yuvj420p", "ffv1": "gray", "png": fmt}.get(codec, "yuv420p")
        if codec == "mjpeg":
            stream.options = {"qmin": "2", "qmax": "2"}  # near-lossless JPEG, as EchoJEPA's re-encodes
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format=fmt)))
        container.mux(stream.encode())  # flush


def write_png(path, image):
    """Write a uint8 (H, W) grey or (H, W, 3) RGB image as PNG."""
    write_video(path, image[None], 1, codec="png")


# ----- clip sampling and transforms -----
def clip_indices(n, video_fps, frames, fps, num_clips=1, rng=None):
    """Frame indices (num_clips, frames) at about `fps` (SPEC §5): step = ceil(video_fps) // fps, random starts if
    rng is given, else evenly spaced (one clip: centred). Short videos repeat their last frame (stills too)."""
    step = max(1, int(math.ceil(video_fps) // fps))
    room = max(0, n - frames * step)
    starts = rng.integers(0, room + 1, num_clips) if rng is not None else np.linspace(0, room, num_clips + 2)[1:-1]
    return np.minimum(np.round(starts).astype(int)[:, None] + np.arange(frames) * step, n - 1)


def normalize(x):
    """uint8-valued grey (T, H, W) float tensor -> ImageNet-normalised (3, T, H, W): grey replicated to 3 channels."""
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None, None], torch.tensor(IMAGENET_STD)[:, None, None, None]
    return (x[None] / 255 - mean) / std


def pretrain_transform(video, crop, rng):
    """Random-resized-crop of the whole clip (one box for all frames) at scale [0.5, 1], aspect [0.9, 1.1], no flip:
    the narrow aspect range keeps the fan's shape and a flip would swap left and right heart (SPEC §5)."""
    T, H, W = video.shape
    area, ratio = H * W * rng.uniform(0.5, 1.0), math.exp(rng.uniform(math.log(0.9), math.log(1.1)))
    w, h = min(W, round(math.sqrt(area * ratio))), min(H, round(math.sqrt(area / ratio)))  # clipped, not redrawn
    i, j = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)
    x = torch.from_numpy(np.ascontiguousarray(video[:, i:i + h, j:j + w])).float()[:, None]  # (T, 1, h, w)
    x = F.interpolate(x, size=(crop, crop), mode="bilinear", align_corners=False, antialias=True)
    return normalize(x[:, 0])


def eval_transform(video, crop):
    """Resize the short side to crop*256/224, then centre crop (the V-JEPA eval transform)."""
    T, H, W = video.shape
    short = round(crop * 256 / 224)
    size = (short, round(W * short / H)) if H <= W else (round(H * short / W), short)
    x = F.interpolate(torch.from_numpy(video).float()[:, None], size=size, mode="bilinear", align_corners=False,
                      antialias=True)[:, 0]  # (T, h, w)
    i, j = (size[0] - crop) // 2, (size[1] - crop) // 2
    return normalize(x[:, i:i + crop, j:j + crop])


# ----- readers: rows (sources, label, study, name); a source is a path, None (MISS) or a synthetic tuple -----
def check_row(where, label_text, paths, integer=False):
    """The label as int (class id) or float, after checking it and that the videos exist: errors name file:line."""
    try:
        label = float(label_text)
    except (TypeError, ValueError):
        label = math.nan
    if not math.isfinite(label) or (integer and (label < 0 or label != int(label))):
        raise ValueError(f"{where}: label {label_text!r} is missing, NaN or not a {'class id' if integer else 'value'}")
    for p in paths:
        if p is not None and not os.path.exists(p):
            raise FileNotFoundError(f"{where}: video not found: {p}")
    return int(label) if integer else label


def read_csv_rows(path, multiview=False, integer=False):
    """V-JEPA CSV `<path> <label>` or multi-view CSV `<view0> ... <viewV-1> <label>` (MISS = missing view):
    space-delimited, no header; relative paths are relative to the CSV. Errors name the file and line."""
    rows, ncols = [], None
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            where, ncols = f"{path}:{line_no}", ncols or len(fields)
            if (len(fields) < 3 if multiview else len(fields) != 2) or len(fields) != ncols:
                raise ValueError(f"{where}: expected " + ("`<view0> <view1> ... <label>` (multi-view)" if multiview
                                 else "`<path> <label>`") + f", got {len(fields)} space-separated columns")
            paths = tuple(None if p == "MISS" else os.path.join(os.path.dirname(path), p) for p in fields[:-1])
            if all(p is None for p in paths):
                raise ValueError(f"{where}: every view is MISS")
            first = next(p for p in fields[:-1] if p != "MISS")  # names the study (view 0 may be MISS)
            rows.append((paths, check_row(where, fields[-1], paths, integer), first, os.path.basename(first)))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def read_echonet(folder, split, fold=None):
    """EchoNet-Dynamic (Split TRAIN/VAL/TEST, FileName without .avi) or -Pediatric (Split = fold 0-9, FileName with
    .avi) folder: FileList.csv + Videos/. fold k: TEST = k, VAL = (k+1) % 10, TRAIN = the rest (the original
    cross-validation). split='pretrain': the TRAIN rows, or every row of a pediatric list when fold is None."""
    path, rows = os.path.join(folder, "FileList.csv"), []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"FileName", "EF", "Split"} <= set(reader.fieldnames or []):
            raise ValueError(f"{path}:1: missing columns, need FileName, EF, Split; found {reader.fieldnames}")
        for line_no, r in enumerate(reader, 2):
            where, s = f"{path}:{line_no}", (r["Split"] or "").strip().upper()
            if s.isdigit() and int(s) < 10:
                if fold is None and split != "pretrain":
                    raise ValueError(f"{where}: Split is a fold id ({s}): pass fold=k (fold k = TEST, k+1 = VAL)")
                k = int(s) if fold is None else (int(s) - fold) % 10  # 0 = the test fold, 1 = the val fold
                s = "TRAIN" if fold is None or k > 1 else ("TEST", "VAL")[k]
            elif s not in ("TRAIN", "VAL", "TEST"):
                raise ValueError(f"{where}: unknown Split {r['Split']!r} (expected TRAIN, VAL, TEST or a fold 0-9)")
            name = r["FileName"]
            video = os.path.join(folder, "Videos", name if name.lower().endswith(".avi") else name + ".avi")
            ef = check_row(where, r["EF"], [video])
            if s == ("TRAIN" if split == "pretrain" else split.upper()):
                rows.append(((video,), ef, name, name))
    if not rows:
        raise ValueError(f"{path}: no rows for split {split!r}" + (f" (fold {fold})" if fold is not None else ""))
    return rows


def find_rows(data, task, split, fold=None):
    """Rows of real data. data = a CSV (`{split}` in the name is filled in), or a folder holding `{task}_{split}.csv`
    (written by this script) or an EchoNet FileList.csv (EF labels only; pretrain: `pretrain.csv` or FileList)."""
    multiview, integer = task == "rvsp", task == "view"
    if os.path.isdir(data):
        name = os.path.join(data, "pretrain.csv" if task == "pretrain" else f"{task}_{split}.csv")
        if os.path.isfile(name):
            return read_csv_rows(name, multiview, integer)
        if not os.path.isfile(os.path.join(data, "FileList.csv")):
            raise FileNotFoundError(f"{data}: no {task}_{split}.csv and no FileList.csv (EchoNet layout)")
        if task not in ("lvef", "pretrain"):
            raise ValueError(f"{data}: an EchoNet FileList.csv has EF labels only, not {task!r} labels")
        return read_echonet(data, "pretrain" if task == "pretrain" else split, fold)
    return read_csv_rows(data.replace("{split}", split), multiview, integer)


def synth_rows(task, split, seed, domain, n):
    """Fixed synthetic probe splits. view: every view of each patient; lvef: 2 A4C clips per patient; rvsp: one
    study of RVSP_VIEWS per patient, 15 % of studies miss one view. A study = one synthetic patient."""
    rows = []
    for i in range(n):
        p, view, clip = {"view": (i // len(VIEWS), VIEWS[i % len(VIEWS)], 0), "lvef": (i // 2, "A4C", i % 2),
                         "rvsp": (i, None, 0)}[task]
        index = SPLIT_BASE[split] + p
        pat = synth_patient(seed, index, domain)
        if task == "rvsp":
            sources = tuple(None if v == pat["missing"] else (seed, index, v, domain, 0) for v in RVSP_VIEWS)
            rows.append((sources, pat["rvsp"], pat["study"], pat["study"]))
        else:
            label = VIEWS.index(view) if task == "view" else pat["EF"]
            rows.append((((seed, index, view, domain, clip),), label, pat["study"], f"{pat['study']}_{view}_{clip}"))
    return rows


# ----- datasets -----
class EchoDataset(torch.utils.data.Dataset):
    """Clips of rows (sources, label, study, name); rows=None is the endless synthetic pretraining stream.
    pretrain: ds[key] = one augmented clip (3, T, crop, crop), deterministic per (seed, key), video key % len.
    probe: ds[i] = dict(clips=(num_clips, 3, T, crop, crop) or (V, num_clips, ...) for multi-view, label, ...).
    A bad video is logged, counted (n_skipped: shared by forked DataLoader workers) and replaced by the next row."""

    def __init__(self, rows, frames, crop, fps, seed, pretrain, num_clips=1, multiview=False, frame_fn=None):
        self.rows, self.frames, self.crop, self.fps, self.seed = rows, frames, crop, fps, seed
        self.pretrain, self.num_clips, self.multiview, self.num_classes = pretrain, num_clips, multiview, None
        self.frame_fn = frame_fn  # probe: f(frames (T, H, W) in [0, 1], video_id=...) -> frames, e.g. a corruption
        self.labels = [r[1] for r in rows] if rows else []
        self.n_skipped, self.skipped = multiprocessing.Value("i", 0), []

    def __len__(self):
        return len(self.rows) if self.rows else 2**20  # synthetic: a nominal size, any key >= 0 works

    def __getitem__(self, key):
        for attempt in range(20):
            try:
                return self.item(key + attempt)
            except BadVideo as e:
                with self.n_skipped.get_lock():  # one count across DataLoader workers
                    self.n_skipped.value += 1
                    print(f"skip {self.n_skipped.value} bad videos so far: {e}", flush=True)
                self.skipped.append(str(e))
        raise RuntimeError(f"20 bad videos in a row from key {key}: is the data readable at all?")

    def load(self, source, num_clips, rng):
        """uint8 (num_clips, frames, H, W) from one source: only the frames of the clips are decoded/rendered."""
        pick = lambda n, vfps: clip_indices(n, vfps, self.frames, self.fps, num_clips, rng)
        if isinstance(source, str):
            return read_video(source, pick)[0]
        seed, index, view, domain, clip = source  # synthetic: long enough for any clip at this fps
        idx = pick(max(SYNTH_FRAMES, self.frames * int(SYNTH_FPS // self.fps)), SYNTH_FPS)
        video, _ = synth_video(seed, index, view, domain, frames=idx.max() + 1, clip=clip, frame_idx=idx.ravel())
        return video.reshape(idx.shape + video.shape[1:])  # (num_clips, frames, H, W)

    def item(self, key):
        rng = np.random.default_rng([self.seed, key])
        synthetic = ((self.seed, key, None, "adult", 0),), 0.0, "", ""  # the endless stream: patient = key
        sources, label, study, name = self.rows[key % len(self.rows)] if self.rows else synthetic
        if self.pretrain:
            return pretrain_transform(self.load(sources[0], 1, rng)[0], self.crop, rng)
        clips = torch.zeros(len(sources), self.num_clips, 3, self.frames, self.crop, self.crop)  # (V, clips, 3, T, ...)
        for v, source in enumerate(sources):  # a missing view (None) stays zero
            for c, clip in enumerate([] if source is None else self.load(source, self.num_clips, None)):
                if self.frame_fn is not None:  # on the decoded frames, before resizing: as if the file were corrupted
                    video_id = name if len(sources) == 1 else f"{name}/{v}"
                    clip = self.frame_fn(clip.astype(np.float32) / 255, video_id=video_id) * 255
                clips[v, c] = eval_transform(clip, self.crop)
        out = dict(clips=clips if self.multiview else clips[0], label=label, study=study, video=name)
        if self.multiview:
            out["present"] = torch.tensor([s is not None for s in sources])
        return out

    def skip_summary(self):
        return f"skipped {self.n_skipped.value} bad videos" + "".join(f"\n  {s}" for s in self.skipped)


def build_pretrain_dataset(data, frames, crop, fps, seed):
    """'synthetic' (endless adult stream, all views) or real data through find_rows (labels ignored)."""
    rows = None if data == "synthetic" else find_rows(data, "pretrain", "train")
    return EchoDataset(rows, frames, crop, fps, seed, pretrain=True)


def build_probe_dataset(data, task, split, frames, crop, fps, seed, num_clips=2, domain="adult", fold=None,
                        n_train=1000, n_val=200, n_test=200, frame_fn=None):
    """Frozen-probe data for task view / lvef / rvsp: fixed 'synthetic' splits of n_train/n_val/n_test items in
    `domain` (adult or pediatric), or real data through find_rows. frame_fn: see EchoDataset."""
    if task not in ("view", "lvef", "rvsp") or split not in SPLIT_BASE or domain not in ("adult", "pediatric"):
        raise ValueError(f"bad task/split/domain {task!r}/{split!r}/{domain!r}: view|lvef|rvsp, train|val|test")
    n = {"train": n_train, "val": n_val, "test": n_test}[split]
    rows = synth_rows(task, split, seed, domain, n) if data == "synthetic" else find_rows(data, task, split, fold)
    ds = EchoDataset(rows, frames, crop, fps, seed, pretrain=False, num_clips=num_clips, multiview=task == "rvsp",
                     frame_fn=frame_fn)
    if task == "view":
        ds.num_classes = max(len(VIEWS), max(ds.labels) + 1)
    return ds


# ----- writing synthetic data to disk -----
def render_to_disk(job):
    """Render one synthetic video to an MJPEG AVI under out/ and return its labels (runs in a Pool worker)."""
    out, seed, index, view, domain, frames = job
    video, labels = synth_video(seed, index, view, domain, frames=frames)
    labels["file"] = f"{'pediatric/' if domain == 'pediatric' else ''}Videos/{labels['study']}_{view}.avi"
    write_video(os.path.join(out, labels["file"]), video, SYNTH_FPS)
    return labels


def write_dataset(out, n, seed=0, frames=SYNTH_FRAMES, n_pediatric=None, workers=1):
    """n patients x every view: EchoNet-Dynamic layout for A4C (FileList.csv, VolumeTracings.csv, Videos/), V-JEPA
    CSVs (pretrain.csv, {view,lvef,rvsp}_{train,val,test}.csv), pediatric/ in EchoNet-Pediatric layout."""
    n_pediatric = n // 4 if n_pediatric is None else n_pediatric
    os.makedirs(os.path.join(out, "pediatric", "Videos"), exist_ok=True)
    os.makedirs(os.path.join(out, "Videos"), exist_ok=True)
    jobs = [(out, seed, i, v, "adult", frames) for i in range(n) for v in VIEWS]
    jobs += [(out, seed, i, "A4C", "pediatric", frames) for i in range(n_pediatric)]
    with multiprocessing.Pool(workers) if workers > 1 else contextlib.nullcontext() as pool:  # 1: in this process
        done = tqdm(pool.imap(render_to_disk, jobs, 4) if pool else map(render_to_disk, jobs), total=len(jobs),
                    desc=f"writing {out}", disable=None)
        videos = {(lab["domain"], lab["study"], lab["view"]): lab for lab in done}
    tables = {"FileList.csv": ["FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split".split(",")],
              "VolumeTracings.csv": ["FileName,X1,Y1,X2,Y2,Frame".split(",")],
              "pediatric/FileList.csv": ["FileName,EF,Sex,Age,Weight,Height,Split".split(",")], "pretrain.csv": []}
    for i in range(n):
        split = (("TRAIN",) * 6 + ("VAL", "TEST"))[i % 8]
        labs = {v: videos["adult", f"S{i:06d}", v] for v in VIEWS}
        a4c, name = labs["A4C"], f"S{i:06d}_A4C"  # EchoNet-Dynamic: FileName without .avi
        tables["FileList.csv"].append([name, *(round(a4c[k], 3) for k in ("EF", "ESV", "EDV")), 112, 112,
                                       SYNTH_FPS, frames, split])
        tables["VolumeTracings.csv"] += [[name + ".avi", *(round(float(c), 2) for c in row[:4]), row[4]]
                                         for row in a4c.get("tracings", [])]  # none if no ED -> ES in the video
        tables["pretrain.csv"] += [[lab["file"], 0] for lab in labs.values()]
        csvs = [tables.setdefault(f"{task}_{split.lower()}.csv", []) for task in ("view", "lvef", "rvsp")]
        csvs[0] += [[lab["file"], lab["view_id"]] for lab in labs.values()]
        csvs[1].append([a4c["file"], round(a4c["EF"], 3)])
        missing = synth_patient(seed, i)["missing"]
        csvs[2].append(["MISS" if v == missing else labs[v]["file"] for v in RVSP_VIEWS] + [round(a4c["rvsp"], 2)])
    for i in range(n_pediatric):  # Sex/Age/Weight/Height only fill the Pediatric columns
        ef, age = videos["pediatric", f"P{i:06d}", "A4C"]["EF"], 1 + (i * 0.618 % 1) * 17
        tables["pediatric/FileList.csv"].append([f"P{i:06d}_A4C.avi", round(ef, 3), "MF"[i % 2], round(age, 1),
                                                 round(8 + 3 * age, 1), round(70 + 5.5 * age, 1), i % 10])
    for name, rows in tables.items():  # EchoNet tables: commas and a header; V-JEPA CSVs: spaces, no header
        with open(os.path.join(out, name), "w", newline="") as f:
            csv.writer(f, delimiter="," if name[0].isupper() or "/" in name else " ").writerows(rows)


def preview(out, seed=0):
    """preview.mp4: views across, EF 25 / 55 / 75 % (adult) and a pediatric row down; preview.png: two frames."""
    rows = [np.concatenate([synth_video(seed, 1, v, domain, frames=100, ef=ef)[0] for v in VIEWS], axis=2)
            for ef, domain in ((25, "adult"), (55, "adult"), (75, "adult"), (None, "pediatric"))]
    grid = np.concatenate(rows, axis=1)  # (T, 4 * 112, len(VIEWS) * 112)
    write_video(os.path.join(out, "preview.mp4"), grid, SYNTH_FPS, codec="libx264")
    write_png(os.path.join(out, "preview.png"), np.concatenate([grid[0], grid[15]], axis=1))
    print(f"wrote {out}/preview.mp4 and {out}/preview.png")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data_synth", help="output folder")
    parser.add_argument("--n", type=int, default=200, help="synthetic patients, each with every view")
    parser.add_argument("--n_pediatric", type=int, default=None, help="pediatric A4C videos (default n // 4)")
    parser.add_argument("--frames", type=int, default=SYNTH_FRAMES, help="frames per video (50 fps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes rendering videos")
    parser.add_argument("--preview", action="store_true", help="write preview.mp4 / preview.png instead")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.preview:
        preview(args.out, args.seed)
    else:
        write_dataset(args.out, args.n, args.seed, args.frames, args.n_pediatric, args.workers)
