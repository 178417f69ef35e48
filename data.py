"""
TEMPORARY STAND-IN for data.py (issue #4 replaces this file with the synthetic echo generator and real loaders).
It only provides build_pretrain_dataset() with a crude moving-ellipse clip so pretrain.py can be developed.
"""
import numpy as np
import torch

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _StandIn(torch.utils.data.Dataset):
    def __init__(self, frames, crop, seed):
        self.frames, self.crop, self.seed = frames, crop, seed

    def __len__(self):
        return 10_000

    def __getitem__(self, key):
        rng = np.random.default_rng([self.seed, key])
        T, S = self.frames, self.crop
        y, x = np.mgrid[0:S, 0:S] / S
        cx, cy, hr = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(1, 2)
        t = np.arange(T)[:, None, None] / 8.0
        r = 0.15 + 0.05 * np.sin(2 * np.pi * hr * t)
        v = (((x - cx) ** 2 + (y - cy) ** 2) < r ** 2).astype(np.float32) * 0.8 + 0.1 * rng.random((T, S, S))
        v = torch.from_numpy(v.astype(np.float32))[None].expand(3, -1, -1, -1)
        mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None, None], torch.tensor(IMAGENET_STD)[:, None, None, None]
        return (v - mean) / std


def build_pretrain_dataset(data, frames, crop, fps, seed):
    assert data == "synthetic", "stand-in supports only synthetic"
    return _StandIn(frames, crop, seed)
