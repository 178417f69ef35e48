"""
Data for nano-EchoJEPA: a synthetic echocardiography generator (the default data) and loaders for real echo.

    python data.py --out data_synth --n 200       # write EchoNet-Dynamic + V-JEPA CSV layout (+ pediatric/)
    python data.py --preview --out .              # preview.mp4 and preview.png of views x EF values

Synthetic echo (SPEC §6): PSF-filtered complex speckle on a polar grid, AR(1) in time, scan-converted into a fan,
times the backscatter of per-view ellipse anatomy whose LV follows the cardiac cycle (exact EF), log-compressed.
Real data (SPEC §5): V-JEPA and multi-view CSVs, EchoNet-Dynamic and EchoNet-Pediatric folders.
"""
import argparse
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
NR, NT = 160, 128  # polar grid: depth samples x scan lines (NOTES-data §1.1)
SPLIT_BASE = {"train": 0, "val": 10**9, "test": 2 * 10**9}  # synthetic patient index offsets: splits never overlap


class BadVideo(ValueError):
    """A video that cannot be decoded (truncated, no frames, not a video). Datasets skip it, with a log line."""

# -----------------------------------------------------------------------------
# synthetic echocardiography

# Anatomy per view: (kind, x, y, a, b, psi) in units of imaging depth, apex of the fan at (0, 0), y pointing down.
# a = half-length along the long axis, b = half-width, psi = long-axis angle from vertical (towards +x).
# Structures are painted in order (wall, then cavity), the LV last, so its cavity is never painted over and the
# walls of later chambers form the septa. Nominal adult sizes; each clip jitters and scales them.
LAYOUTS = {
    "A4C": [("ra", -0.16, 0.84, 0.11, 0.10, -0.2), ("la", 0.12, 0.86, 0.11, 0.12, 0.15),
            ("rv", -0.18, 0.44, 0.25, 0.08, -0.18), ("lv", 0.085, 0.45, 0.30, 0.13, 0.12)],
    "A2C": [("la", 0.05, 0.86, 0.11, 0.13, 0.05), ("lv", 0.03, 0.45, 0.30, 0.13, 0.05)],
    "A3C": [("la", -0.04, 0.87, 0.10, 0.11, -0.1), ("ao", 0.17, 0.75, 0.14, 0.055, -0.9),
            ("lv", 0.02, 0.45, 0.30, 0.13, 0.02)],
    "A5C": [("ra", -0.17, 0.84, 0.11, 0.10, -0.2), ("la", 0.13, 0.88, 0.10, 0.11, 0.15),
            ("rv", -0.18, 0.44, 0.25, 0.08, -0.18), ("ao", 0.01, 0.78, 0.12, 0.05, -0.35),
            ("lv", 0.085, 0.45, 0.30, 0.13, 0.12)],
    "PLAX": [("rv", 0.0, 0.25, 0.2, 0.07, 1.65), ("ao", 0.25, 0.45, 0.17, 0.06, 1.35),
             ("la", 0.26, 0.72, 0.11, 0.10, 1.4), ("lv", -0.06, 0.55, 0.30, 0.13, 1.62)],
    "PSAX": [("rv", -0.11, 0.41, 0.19, 0.07, 2.25), ("lvsax", 0.02, 0.55, 0.13, 0.13, 0.67)],
}
DB = dict(blood=-52.0, tissue=-35.0, wall=-12.0, pericardium=-5.0)  # backscatter, dB below the display reference


@functools.lru_cache(maxsize=1)
def speckle_bank(n=32, size=256):
    """PSF-filtered complex Gaussian fields shared by all clips; a frame's fresh speckle is a random crop. Filtering
    per frame would cost more than the rest of the generator; crops keep the Rayleigh statistics exactly."""
    rng = np.random.default_rng(1234)
    z = rng.standard_normal((n, size, size), np.float32) + 1j * rng.standard_normal((n, size, size), np.float32)
    k = np.fft.fftfreq(size)
    psf = np.exp(-2 * np.pi**2 * (0.8**2 * k[:, None] ** 2 + 2.0**2 * k[None, :] ** 2))  # sigma 0.8 axial, 2 lateral
    z = np.fft.ifft2(np.fft.fft2(z) * psf)
    return (z / np.sqrt(np.mean(np.abs(z) ** 2))).astype(np.complex64)  # E|z|^2 = 1


@functools.lru_cache(maxsize=256)
def fan_geometry(size, half_angle_deg, depth_pct):
    """Scan-conversion map for one fan (computed once per geometry): in-sector pixels, their 4 polar neighbours
    and bilinear weights, and their position in depth units for the anatomy."""
    theta_max, r_max = math.radians(half_angle_deg), size * depth_pct / 100
    i, j = np.mgrid[0:size, 0:size]
    x, y = (j - (size - 1) / 2) / r_max, (i + 0.5) / r_max  # apex just above the top-centre pixel
    r, theta = np.hypot(x, y), np.arctan2(x, y)
    inside = np.flatnonzero((r <= 1) & (np.abs(theta) <= theta_max))
    x, y, r, theta = (v.ravel()[inside] for v in (x, y, r, theta))  # (P,) for the P in-sector pixels
    ri, ti = r * (NR - 1), (theta / theta_max + 1) / 2 * (NT - 1)  # fractional polar grid coordinates
    r0, t0 = np.minimum(ri.astype(int), NR - 2), np.minimum(ti.astype(int), NT - 2)
    fr, ft = (ri - r0).astype(np.float32), (ti - t0).astype(np.float32)
    idx = r0 * NT + t0 + np.array([0, 1, NT, NT + 1])[:, None]  # (4, P) flat polar indices of the neighbours
    w = np.stack([(1 - fr) * (1 - ft), (1 - fr) * ft, fr * (1 - ft), fr * ft])  # (4, P) bilinear weights
    return dict(inside=inside, idx=idx, w=w, r_max=r_max, x=x, y=y, r=r)


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
    return dict(EF=ef, EDV=edv, ESV=esv, rvsp=rvsp, hr=hr, systole=rng.uniform(0.35, 0.40), size=size,
                lv=(a_ed, b_ed, a_es, b_es), myo=rng.uniform(0.9, 1.1), missing=missing,
                study=f"{'P' if ped else 'S'}{index:06d}", domain=domain)


def synth_video(seed, index, view=None, domain="adult", frames=SYNTH_FRAMES, fps=SYNTH_FPS, size=112, clip=0,
                frame_idx=None, ef=None, rvsp=None, envelope=False):
    """One synthetic echo video of `frames` frames at `fps`: uint8 (T, size, size) and a dict of labels.
    Deterministic per (seed, index, view, clip); index is the patient, so all views of an index form one study.
    frame_idx renders only those frames of the video (time is continuous, so a clip costs only its frames).
    envelope=True returns the float envelope before log compression instead of uint8 (for the Rayleigh test)."""
    pat = synth_patient(seed, index, domain, ef, rvsp)
    if view is None:  # a random view, chosen so that synth_video(s, i) == synth_video(s, i, <that view>)
        view = VIEWS[np.random.default_rng([seed, index, 7]).integers(len(VIEWS))]
    view_id, ped = VIEWS.index(view), domain == "pediatric"
    rng = np.random.default_rng([seed, index, ped, view_id, clip])
    geo = fan_geometry(size, int(rng.integers(38, 46)), int(rng.integers(90, 97)))
    depth = rng.uniform(9, 11) if ped else rng.uniform(14, 17)  # cm imaged, varies per clip
    scale, tilt, shift = 15 / depth * pat["size"], rng.normal(0, 0.06), rng.normal(0, 0.025, 2)  # probe pose
    frame_idx, inverse = np.unique(np.arange(frames) if frame_idx is None else frame_idx, return_inverse=True)
    rho, att, gain = rng.uniform(0.9, 0.98), rng.uniform(0.3, 0.6) if ped else rng.uniform(0.6, 1.0), rng.normal(0, 2)
    # contraction s in [0, 1] (0 = end-diastole, 1 = end-systole) over the cardiac phase in [0, 1): cosine systole,
    # cosine rapid filling over the next quarter cycle, then diastasis at s = 0 (NOTES-data §1.4)
    phase, systole = (np.arange(frames) / fps * pat["hr"] / 60 + rng.random()) % 1, pat["systole"]
    fill = np.clip((phase - systole) / 0.25, 0, 1)
    s_all = np.where(phase < systole, 0.5 * (1 - np.cos(np.pi * phase / systole)), 0.5 * (1 + np.cos(np.pi * fill)))
    s = s_all[frame_idx][:, None]  # (T, 1) for the rendered frames
    rv_load = np.clip((pat["rvsp"] - 15) / 45, 0, 1.7)  # pressure load: RV/RA dilate, septum flattens
    a_ed, b_ed, a_es, b_es = (v / depth for v in pat["lv"])
    la, lb = a_ed + (a_es - a_ed) * s, b_ed + (b_es - b_ed) * s  # (T, 1) LV half-axes, depth units
    myo = math.pi * ((a_ed + 0.065 * scale) * (b_ed + 0.065 * scale) - a_ed * b_ed) * pat["myo"]  # wall area
    h = (-(la + lb) + np.sqrt((la + lb) ** 2 + 4 * myo / math.pi)) / 2  # wall thickens: myocardial area constant

    # anatomy: backscatter in dB for every in-sector pixel of every frame, (T, P)
    x, y, c, sn = geo["x"], geo["y"], math.cos(tilt), math.sin(tilt)
    db = np.full((len(frame_idx), len(x)), DB["tissue"], np.float32)
    lv_px = None
    for kind, cx, cy, a, b, psi in LAYOUTS[view]:
        cx, cy, psi = scale * (c * cx + sn * cy) + shift[0], scale * (c * cy - sn * cx) + shift[1], psi + tilt
        if kind in ("lv", "lvsax"):
            a, b, wall = (la, lb, h) if kind == "lv" else (lb * (1 - 0.25 * rv_load), lb, h)
        else:
            j = rng.uniform(0.9, 1.1, 2) * scale
            grow = {"rv": (1 + 0.15 * rv_load - 0.08 * s, 1 + 0.4 * rv_load - 0.2 * s), "ra": (1 + 0.3 * rv_load,) * 2,
                    "la": (1 + 0.12 * s,) * 2, "ao": (1 + 0.06 * s,) * 2}[kind]
            a, b = a * j[0] * grow[0], b * j[1] * grow[1]
            wall = 0.02 * scale * (1 + 0.8 * rv_load if kind == "rv" else 1)
        ux, uy = math.sin(psi), math.cos(psi)  # long-axis direction
        along0, across = (x - cx) * ux + (y - cy) * uy, (x - cx) * uy - (y - cy) * ux  # (P,)
        along = along0 - (a - a_ed if kind == "lv" else 0)  # LV: the apex stays put, the base moves (T, P)
        lv_px = (cx, cy, ux, uy) if kind == "lv" else lv_px
        rims = ((wall + 0.015 * scale, "pericardium"),) if kind in ("lv", "lvsax") else ()  # brighter rim
        for extra, level in rims + ((wall, "wall"), (0, "blood")):
            q = (along / (a + extra)) ** 2 + across**2 / (b + extra) ** 2  # < 1 inside the ellipse, (T, P)
            np.copyto(db, DB[level], where=q < 1)

    # speckle: AR(1) in time on the polar grid (rho per 1/50 s), then bilinear scan conversion
    bank = speckle_bank()
    pick = rng.integers(0, [len(bank), bank.shape[1] - NR, bank.shape[2] - NT], (len(frame_idx), 3))
    rho = rho ** (np.diff(frame_idx, prepend=frame_idx[0]) * SYNTH_FPS / fps)  # correlation between rendered frames
    z = np.empty((len(frame_idx), NR * NT), np.complex64)
    for t, (k, i, j) in enumerate(pick):
        fresh = bank[k, i:i + NR, j:j + NT].ravel()
        z[t] = fresh if t == 0 else rho[t] * z[t - 1] + math.sqrt(1 - rho[t] ** 2) * fresh
    zc = sum(w * np.take(z, i, axis=1) for w, i in zip(geo["w"], geo["idx"]))  # (T, P) complex, still Gaussian
    power = zc.real**2 + zc.imag**2
    db += (-8.686 * att * geo["r"] + 12 * np.exp(-geo["r"] / 0.06) + gain).astype(np.float32)  # TGC residual, clutter
    out = np.zeros((len(frame_idx), size * size), np.float32 if envelope else np.uint8)
    if envelope:  # amplitude = sqrt(backscatter power) x Rayleigh speckle
        out[:, geo["inside"]] = 10 ** (db / 20) * np.sqrt(power)
    else:  # log compression over a 50 dB dynamic range
        out[:, geo["inside"]] = np.clip((db + 10 * np.log10(power + 1e-12) + 50) * (255 / 50), 0, 255)
    labels = dict(EF=pat["EF"], EDV=pat["EDV"], ESV=pat["ESV"], rvsp=pat["rvsp"], hr=pat["hr"], view=view,
                  view_id=view_id, study=pat["study"], domain=domain, fps=fps, frames=frames)
    ed = np.flatnonzero((s_all[:-1] == 0) & (s_all[1:] > 0))  # last diastasis frame before systole starts
    systole_frames = int(fps * 60 / pat["hr"] * pat["systole"]) + 2
    if lv_px is not None and len(ed) and ed[0] + systole_frames < frames:
        es = ed[0] + int(np.argmax(s_all[ed[0]:ed[0] + systole_frames]))  # the frame closest to s = 1
        axes = [(f, a_ed + (a_es - a_ed) * s_all[f], b_ed + (b_es - b_ed) * s_all[f]) for f in (ed[0], es)]
        labels.update(ed_frame=int(ed[0]), es_frame=int(es), tracings=lv_tracings(lv_px, a_ed, axes, geo, size))
    return out.reshape(-1, size, size)[inverse], labels  # (T, size, size) in the order of frame_idx


def lv_tracings(lv, a_ed, axes, geo, size):
    """EchoNet VolumeTracings rows (X1, Y1, X2, Y2, Frame) in pixels: per traced frame the LV long axis (apex to
    base), then 20 method-of-discs chords perpendicular to it (NOTES-data §3.1)."""
    cx, cy, ux, uy = lv
    px = lambda x, y: (x * geo["r_max"] + (size - 1) / 2, y * geo["r_max"] - 0.5)  # depth units -> pixels
    rows = []
    for f, a, b in axes:
        mx, my = cx + (a - a_ed) * ux, cy + (a - a_ed) * uy  # the centre moves, the apex stays
        rows.append((*px(mx - a * ux, my - a * uy), *px(mx + a * ux, my + a * uy), f))
        for p in -a + (np.arange(20) + 0.5) * a / 10:  # disc centres along the axis; half-chord w
            w, x, y = b * math.sqrt(1 - (p / a) ** 2), mx + p * ux, my + p * uy
            rows.append((*px(x - w * uy, y + w * ux), *px(x + w * uy, y - w * ux), f))
    return rows

# -----------------------------------------------------------------------------
# video I/O (PyAV)

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
    """Grey uint8 (T, H, W) or RGB (T, H, W, 3) frames: mjpeg .avi as EchoNet (MJPG), ffv1 lossless (exact fixtures),
    libx264 .mp4."""
    fmt = "rgb24" if frames.ndim == 4 else "gray"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=round(fps))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = {"mjpeg": "yuvj420p", "ffv1": "gray"}.get(codec, "yuv420p")
        if codec == "mjpeg":
            stream.options = {"qmin": "2", "qmax": "2"}  # near-lossless JPEG, as EchoJEPA's re-encodes
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format=fmt)))
        container.mux(stream.encode())  # flush


def write_png(path, image):
    """Write a uint8 (H, W) grey or (H, W, 3) RGB image as PNG through PyAV's png encoder."""
    fmt = "gray" if image.ndim == 2 else "rgb24"
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream("png")
        stream.height, stream.width, stream.pix_fmt = image.shape[0], image.shape[1], fmt
        container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=fmt)))
        container.mux(stream.encode())


# -----------------------------------------------------------------------------
# clip sampling and transforms

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


def zscore_stats(labels):
    """(mean, std) of regression targets; compute them on the TRAIN split and store them with the probe."""
    return float(np.mean(labels)), float(np.std(labels) + 1e-8)


def zscore(y, stats, inverse=False):
    """Standardise targets with train statistics (inverse=True maps predictions back to EF points / mmHg)."""
    return y * stats[1] + stats[0] if inverse else (y - stats[0]) / stats[1]

# -----------------------------------------------------------------------------
# readers: each returns rows (sources, label, study, name); a source is a path, None (MISS) or a synthetic tuple

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

# -----------------------------------------------------------------------------
# datasets

class EchoDataset(torch.utils.data.Dataset):
    """Clips of rows (sources, label, study, name); rows=None is the endless synthetic pretraining stream.
    pretrain: ds[key] = one augmented clip (3, T, crop, crop), deterministic per (seed, key), video key % len.
    probe: ds[i] = dict(clips=(num_clips, 3, T, crop, crop) or (V, num_clips, ...) for multi-view, label, ...).
    A bad video is logged, counted (n_skipped: shared by forked DataLoader workers) and replaced by the next row."""

    def __init__(self, rows, frames, crop, fps, seed, pretrain, num_clips=1, multiview=False, frame_fn=None):
        self.rows, self.frames, self.crop, self.fps, self.seed = rows, frames, crop, fps, seed
        self.pretrain, self.num_clips, self.multiview, self.num_classes = pretrain, num_clips, multiview, None
        self.frame_fn = frame_fn  # probe: f(frames (T, H, W) float in [0, 1], video_id=...) -> frames, e.g. a corruption
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
        zeros = torch.zeros(self.num_clips, 3, self.frames, self.crop, self.crop)
        clips = torch.stack([zeros if s is None else torch.stack([self.eval_clip(c, name if len(sources) == 1 else
                                                                                 f"{name}/{v}")
                                                                  for c in self.load(s, self.num_clips, None)])
                             for v, s in enumerate(sources)])  # (V, num_clips, 3, T, crop, crop)
        out = dict(clips=clips if self.multiview else clips[0], label=label, study=study, video=name)
        if self.multiview:
            out["present"] = torch.tensor([s is not None for s in sources])
        return out

    def eval_clip(self, clip, video_id):
        """Eval transform of one decoded uint8 clip, after the frame_fn hook on its [0, 1] frames (before resizing,
        as if the video file itself were corrupted). video_id (the row's name, '/view' for multi-view) seeds it."""
        if self.frame_fn is not None:
            clip = self.frame_fn(clip.astype(np.float32) / 255, video_id=video_id) * 255
        return eval_transform(clip, self.crop)

    def skip_summary(self):
        return f"skipped {self.n_skipped.value} bad videos" + "".join(f"\n  {s}" for s in self.skipped)


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


def build_pretrain_dataset(data, frames, crop, fps, seed):
    """'synthetic' (endless adult stream, all views) or real data: a V-JEPA CSV (labels ignored) or a folder
    (pretrain.csv, else the TRAIN split of an EchoNet FileList.csv, every row of a pediatric one)."""
    rows = None if data == "synthetic" else find_rows(data, "pretrain", "train")
    return EchoDataset(rows, frames, crop, fps, seed, pretrain=True)


def build_probe_dataset(data, task, split, frames, crop, fps, seed, num_clips=2, domain="adult", fold=None,
                        n_train=1000, n_val=200, n_test=200, frame_fn=None):
    """Frozen-probe data for task view / lvef / rvsp. 'synthetic' builds fixed deterministic splits of
    n_train/n_val/n_test items in `domain` (adult or pediatric); real data goes through find_rows. frame_fn: see
    EchoDataset (probe.py --robustness corrupts the test videos on the fly with it)."""
    if task not in ("view", "lvef", "rvsp") or split not in SPLIT_BASE or domain not in ("adult", "pediatric"):
        raise ValueError(f"bad task/split/domain {task!r}/{split!r}/{domain!r}: view|lvef|rvsp, train|val|test")
    n = {"train": n_train, "val": n_val, "test": n_test}[split]
    rows = synth_rows(task, split, seed, domain, n) if data == "synthetic" else find_rows(data, task, split, fold)
    ds = EchoDataset(rows, frames, crop, fps, seed, pretrain=False, num_clips=num_clips, multiview=task == "rvsp",
                     frame_fn=frame_fn)
    if task == "view":
        ds.num_classes = max(len(VIEWS), max(ds.labels) + 1)
    return ds

# -----------------------------------------------------------------------------
# writing synthetic data to disk

def render_to_disk(job):
    """Render one synthetic video to an MJPEG AVI under out/ and return its labels (runs in a Pool worker)."""
    out, seed, index, view, domain, frames = job
    video, labels = synth_video(seed, index, view, domain, frames=frames)
    labels["file"] = f"{'pediatric/' if domain == 'pediatric' else ''}Videos/{labels['study']}_{view}.avi"
    write_video(os.path.join(out, labels["file"]), video, SYNTH_FPS)
    return labels


def write_dataset(out, n, seed=0, frames=SYNTH_FRAMES, n_pediatric=None, workers=1):
    """n patients x every view: EchoNet-Dynamic layout for A4C (FileList.csv, VolumeTracings.csv, Videos/), V-JEPA CSVs
    (pretrain.csv, {view,lvef,rvsp}_{train,val,test}.csv), pediatric/ in EchoNet-Pediatric layout (Split = fold)."""
    n_pediatric = n // 4 if n_pediatric is None else n_pediatric
    os.makedirs(os.path.join(out, "pediatric", "Videos"), exist_ok=True)
    os.makedirs(os.path.join(out, "Videos"), exist_ok=True)
    jobs = [(out, seed, i, v, "adult", frames) for i in range(n) for v in VIEWS]
    jobs += [(out, seed, i, "A4C", "pediatric", frames) for i in range(n_pediatric)]
    with multiprocessing.Pool(workers) as pool:
        done = tqdm(pool.imap(render_to_disk, jobs, 4), total=len(jobs), desc=f"writing {out}", disable=None)
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
    parser = argparse.ArgumentParser(description="Write synthetic echo data (EchoNet layout + CSVs) or a preview.")
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
