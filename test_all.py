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
    # a tissue patch left of the LV in A2C (homogeneous backscatter); frames 0.2 s apart decorrelate the speckle
    env = [data.synth_video(0, i, "A2C", frames=12, fps=5, envelope=True)[0][:, 64:78, 12:26] for i in range(10)]
    x = np.concatenate([(e / e.mean()).ravel() for e in env])
    print(f"    envelope mean/std {x.mean() / x.std():.3f} (Rayleigh 1.913)")
    assert all((e > 0).all() for e in env) and abs(x.mean() / x.std() - 1.913) < 0.15


def test_data_synth_ef():
    # EF measured on the rendered pixels: segment the dark LV cavity at the ED and ES frames (3x3 mean < 80, flood
    # fill from the long-axis midpoint), area-length V = 8A^2/(3 pi L); also the disc method on the tracings
    errors, disc_errors = [], []
    for i in range(12):
        labels = data.synth_video(0, i, "A4C", frame_idx=[0])[1]  # labels only (renders one frame)
        ed, es = labels["ed_frame"], labels["es_frame"]
        video, _ = data.synth_video(0, i, "A4C", frame_idx=[ed, es])
        sector = data.synth_video(0, i, "A4C", frame_idx=[ed, es], envelope=True)[0] > 0
        tracings = np.array(labels["tracings"], float)  # (42, 5): per frame the long axis, then 20 chords
        area_length, discs = [], []
        for k, frame in enumerate((ed, es)):
            rows = tracings[tracings[:, 4] == frame]
            x1, y1, x2, y2 = rows[0, :4]
            length = np.hypot(x2 - x1, y2 - y1)
            discs.append(sum(np.pi * (np.hypot(r[2] - r[0], r[3] - r[1]) / 2) ** 2 * length / 20 for r in rows[1:]))
            img = torch.tensor(video[k], dtype=torch.float32)[None, None]
            dark = (torch.nn.functional.avg_pool2d(img, 3, 1, 1, count_include_pad=False)[0, 0] < 80)
            dark &= torch.tensor(sector[k])
            cavity = torch.zeros_like(dark)
            cavity[round((y1 + y2) / 2), round((x1 + x2) / 2)] = True
            for _ in range(200):
                grown = (torch.nn.functional.max_pool2d(cavity[None, None].float(), 3, 1, 1)[0, 0] > 0) & dark
                if torch.equal(grown, cavity):
                    break
                cavity = grown
            yy, xx = np.nonzero(cavity.numpy())
            along = (xx * (x2 - x1) + yy * (y2 - y1)) / length
            area_length.append(8 * len(xx) ** 2 / (3 * np.pi * (along.max() - along.min() + 1)))
        errors.append(100 * (1 - area_length[1] / area_length[0]) - labels["EF"])
        disc_errors.append(100 * (1 - discs[1] / discs[0]) - labels["EF"])
    print(f"    EF error from pixels: MAE {np.mean(np.abs(errors)):.2f}, max {np.max(np.abs(errors)):.2f}; "
          f"from tracings: max {np.max(np.abs(disc_errors)):.2f}")
    assert np.mean(np.abs(errors)) < 1.5 and np.max(np.abs(errors)) < 3 and np.max(np.abs(disc_errors)) < 1


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
    y = np.array([40.0, 60.0, 50.0])
    stats = data.zscore_stats(y)
    assert abs(data.zscore(y, stats).mean()) < 1e-9 and np.allclose(data.zscore(data.zscore(y, stats), stats, True), y)


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
        data.write_dataset(tmp, 8, frames=48, n_pediatric=10)
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
            assert s.codec_tag == "MJPG" and s.average_rate == 50 and s.frames == 48
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
