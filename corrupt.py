"""
Test-time corruptions of echo video (SPEC §8, NOTES-data §4): the probe is trained on clean clips and scored on
corrupted copies of the test split, to measure robustness to acquisition artefacts.

    python corrupt.py --data EchoNet-Dynamic --kind da --level high --out EchoNet-da-high  # corrupted TEST split
    python corrupt.py --preview --out corrupt_preview.png   # one synthetic frame: clean vs every kind and level

Library use (probe.py): corrupt_video(video, kind, level, seed, video_id) on float frames in [0, 1].
Every corruption is ONE static multiplicative map per video, applied to all frames: the artefacts come from the
probe, the chest wall and the machine settings, which do not move with the heart. The map is drawn from a generator
seeded by (seed, crc32(video_id)), so a video gets the same map in any process; EchoJEPA seeded with Python's
hash(), which is salted per process (bowang-lab/EchoJEPA:data/batch_gaussian_shadow.py).
Kinds: da, gs (the two EchoJEPA ran, formulas exactly as its scripts) and rib, speckle, gain (extras).
"""
import argparse
import csv
import os
import sys
import zlib

import numpy as np
from tqdm import tqdm

KINDS = ["da", "gs", "rib", "speckle", "gain"]
PAPER_KINDS = ["da", "gs"]  # the 6 sets (2 kinds x 3 levels) of EchoJEPA's robustness table
LEVELS = ["low", "med", "high"]
# severity presets, one tuple per level (low, med, high)
DA_GAMMA = (0.75, 1.50, 2.15)  # usaugment DepthAttenuation rate as EchoJEPA ran it
GS_PRESET = ((0.4, 0.15), (0.6, 0.20), (0.8, 0.25))  # (strength s, sigma as a fraction of (W, H))
RIB_PRESET = ((0.5, 3.0), (0.7, 5.0), (0.9, 7.0))  # (strength s, angular sigma in degrees)
SPECKLE_LOOKS = (8, 3, 1)  # independent speckle looks averaged: 1 = fully developed speckle (Rayleigh)
GAIN_DB = (2.0, 4.0, 6.0)  # receiver over-gain in dB (NOTES-data §4: G in [-6, +6] dB)


def video_rng(seed, video_id):
    """Generator for one video's map. crc32 is stable across processes and platforms, unlike the salted hash()."""
    return np.random.default_rng([seed, zlib.crc32(str(video_id).encode())])


def check(kind, level):
    """Index of the level (0, 1, 2); a ValueError naming the valid choices for an unknown kind or level."""
    if kind not in KINDS:
        raise ValueError(f"unknown corruption kind {kind!r}: choose one of {', '.join(KINDS)}")
    if level not in LEVELS:
        raise ValueError(f"unknown corruption level {level!r}: choose one of {', '.join(LEVELS)}")
    return LEVELS.index(level)


def corruption_map(kind, level, H, W, rng):
    """The (H, W) float32 multiplicative map of one video; frames become clip(frame * map, 0, 1).
    Pixel coordinates: x = column 0..W-1, y = row 0..H-1, the probe (fan apex) at the top centre."""
    k = check(kind, level)
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    if kind == "da":
        # Depth attenuation. Tissue absorbs ~0.5 dB/cm/MHz on the way down and back, and time-gain compensation
        # undoes only part of it, so echoes fade with distance from the probe. usaugment models this as an
        # exponential in the normalised distance from the top-centre: d = 1 at the bottom centre, so A = e^-gamma
        # there (0.47 / 0.22 / 0.12).
        d = np.sqrt((x / (W - 1) - 0.5) ** 2 + (y / (H - 1)) ** 2)
        m = np.exp(-DA_GAMMA[k] * d)
    elif kind == "gs":
        # Gaussian shadow: a soft dark blob standing in for an acoustic shadow (rib, lung, calcification). The
        # centre is truncated to a whole pixel as in EchoJEPA's script, so the map reaches exactly 1 - s there.
        s, sig = GS_PRESET[k]
        mx, my = int(rng.uniform(0.2, 0.8) * W), int(rng.uniform(0.2, 0.8) * H)
        m = 1 - s * np.exp(-((x - mx) ** 2) / (2 * (sig * W) ** 2) - (y - my) ** 2 / (2 * (sig * H) ** 2))
    elif kind == "rib":
        # Rib shadow. Bone reflects and absorbs nearly all the beam, so every scan line that crosses a rib is dark
        # from the rib's depth downwards: a wedge from the apex, not a blob. Polar map about the apex (just above
        # the top-centre pixel, as in data.fan_geometry): S(r, theta) = 1 - s * exp(-(theta - theta0)^2 /
        # (2 sig^2)) * sigmoid((r - r0) / w), r in units of the image height. The rib lies in the chest wall
        # (r0 = 5-25 % of the depth); the sigmoid is the blur of the beam at the rib's edge.
        s, sig = RIB_PRESET[k]
        theta0, r0 = np.radians(rng.uniform(-25, 25)), rng.uniform(0.05, 0.25)
        r, theta = np.hypot(x - (W - 1) / 2, y + 0.5) / H, np.arctan2(x - (W - 1) / 2, y + 0.5)
        onset = 1 / (1 + np.exp(-(r - r0) / 0.02))
        m = 1 - s * np.exp(-((theta - theta0) ** 2) / (2 * np.radians(sig) ** 2)) * onset
    elif kind == "speckle":
        # Multiplicative speckle, the standard model of ultrasound noise: I' = I * n. Each look is the echo of many
        # random scatterers in one resolution cell, a complex Gaussian field blurred by the point-spread function
        # (longer laterally than axially); its amplitude is Rayleigh. Averaging L independent looks (compounding)
        # lowers the contrast, so 8 / 3 / 1 looks give low / med / high. Static per video like every map here: the
        # limit of speckle that does not decorrelate (stationary near-field clutter), the protocol's one-map rule.
        looks = SPECKLE_LOOKS[k]
        sy, sx = H / 140, W / 70  # PSF std in pixels: 0.8 axial x 1.6 lateral at 112 x 112
        ky, kx = np.fft.fftfreq(H)[:, None], np.fft.fftfreq(W)[None, :]
        psf = np.exp(-2 * np.pi**2 * ((sy * ky) ** 2 + (sx * kx) ** 2))  # Fourier transform of the Gaussian PSF
        z = rng.standard_normal((looks, H, W)) + 1j * rng.standard_normal((looks, H, W))
        intensity = np.mean(np.abs(np.fft.ifft2(np.fft.fft2(z) * psf)) ** 2, axis=0)  # mean of L looks
        m = np.sqrt(intensity)  # envelope amplitude: Rayleigh for one look
        m = m / m.mean()  # unit mean, so only the texture changes, not the overall brightness
    else:
        # Over-gain. The operator's receiver gain scales every echo by 10^(G/20); the display saturates at white,
        # so bright walls clip and their texture is lost (the clip in corrupt_video). No randomness.
        m = np.full((H, W), 10 ** (GAIN_DB[k] / 20))
    return m.astype(np.float32)


def corrupt_video(video, kind, level, seed=0, video_id=""):
    """Corrupted copy of float frames in [0, 1] of shape (..., H, W) (e.g. (T, H, W)): one map for every frame,
    seeded by (seed, video_id), output clipped to [0, 1]. Takes a numpy array or a torch tensor (same type back).
    video_id names the video (probe.py and the CLI use the EchoNet FileName), so the map is reproducible."""
    torch_in = hasattr(video, "new_tensor")  # duck-typed, so that importing this module does not import torch
    if not (video.is_floating_point() if torch_in else video.dtype.kind == "f"):
        raise ValueError(f"corrupt_video expects float frames in [0, 1], got dtype {video.dtype} (divide by 255)")
    m = corruption_map(kind, level, video.shape[-2], video.shape[-1], video_rng(seed, video_id))
    if torch_in:
        return (video * video.new_tensor(m)).clamp(0, 1)
    return np.clip(video * m, 0, 1).astype(video.dtype)

# -----------------------------------------------------------------------------
# corrupted copy of an EchoNet folder, and a preview grid
# data.py is imported in these functions only: it pulls in torch (seconds to import), which the maps do not need.

def corrupt_folder(data, out, kind, level, seed=0, fold=None):
    """Write the TEST split of an EchoNet folder (FileList.csv + Videos/*.avi), corrupted, to `out` in the same
    layout: the test rows of FileList.csv (Split set to TEST, so the copy loads with or without a fold), the
    matching VolumeTracings.csv rows if any, and MJPEG AVIs as in EchoNet. Returns the number of videos."""
    from data import read_echonet, read_video, write_video
    check(kind, level)
    if not os.path.isfile(os.path.join(data, "FileList.csv")):
        raise ValueError(f"{data}: no FileList.csv (expected the EchoNet layout: FileList.csv + Videos/)")
    if os.path.realpath(data) == os.path.realpath(out):
        raise ValueError(f"--out {out} is the input folder: the originals would be overwritten")
    rows = read_echonet(data, "test", fold)  # raises, naming the file, if there is no TEST split
    names = {row[2] for row in rows}
    os.makedirs(os.path.join(out, "Videos"), exist_ok=True)
    for table in ("FileList.csv", "VolumeTracings.csv"):
        if not os.path.isfile(os.path.join(data, table)):
            continue
        with open(os.path.join(data, table), newline="") as f:
            reader = csv.DictReader(f)
            keep = [r for r in reader if r["FileName"] in names or r["FileName"].removesuffix(".avi") in names]
        with open(os.path.join(out, table), "w", newline="") as f:
            writer = csv.DictWriter(f, reader.fieldnames)
            writer.writeheader()
            writer.writerows([{**r, "Split": "TEST"} if table == "FileList.csv" else r for r in keep])
    for (src,), _, name, _ in tqdm(rows, desc=f"{kind}-{level} -> {out}"):
        video, fps = read_video(src)
        video = corrupt_video(video.astype(np.float32) / 255, kind, level, seed, video_id=name)
        write_video(os.path.join(out, "Videos", os.path.basename(src)), np.round(video * 255).astype(np.uint8), fps)
    return len(rows)


def preview(out, seed=0):
    """PNG grid of one synthetic A4C frame: rows = kinds, columns = clean + the three levels. Returns (H, W)."""
    from data import synth_video, write_png
    frame = synth_video(seed, 0, "A4C", frames=1)[0].astype(np.float32) / 255  # (1, 112, 112)
    grid = np.concatenate([np.concatenate([frame[0]] + [corrupt_video(frame, kind, level, seed, "preview")[0]
                                                        for level in LEVELS], axis=1) for kind in KINDS], axis=0)
    write_png(out, np.round(grid * 255).astype(np.uint8))
    print(f"wrote {out} ({grid.shape[1]}x{grid.shape[0]}): rows {' '.join(KINDS)}; columns clean {' '.join(LEVELS)}")
    return grid.shape


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="EchoNet folder (FileList.csv + Videos/) whose TEST split is corrupted")
    parser.add_argument("--kind", choices=KINDS, help="corruption kind")
    parser.add_argument("--level", choices=LEVELS, help="severity")
    parser.add_argument("--out", help="output folder (same layout as --data); with --preview the PNG path")
    parser.add_argument("--seed", type=int, default=0, help="seeds the per-video maps with each FileName")
    parser.add_argument("--fold", type=int, default=None, help="EchoNet-Pediatric: fold k is the TEST split")
    parser.add_argument("--preview", action="store_true", help="write a PNG of clean vs every kind and level")
    args = parser.parse_args(argv)
    if args.preview:
        preview(args.out or "corrupt_preview.png", args.seed)
        return
    if not (args.data and args.kind and args.level and args.out):
        parser.error("give --data, --kind, --level and --out (or --preview)")
    try:
        n = corrupt_folder(args.data, args.out, args.kind, args.level, args.seed, args.fold)
    except (ValueError, OSError) as e:  # bad input: one line, no traceback wall (data.BadVideo is a ValueError)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {n} corrupted test videos ({args.kind} {args.level}) to {args.out}")


if __name__ == "__main__":
    main()
