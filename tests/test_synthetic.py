"""Synthetic lunar scenes: layout, determinism, exact masks, class statistics, the real-like look."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from lunar_cli.classes import PALETTE, read_image_rgb, read_mask
from lunar_cli.console import LunarError
from lunar_cli.data.scene import SKY_MAX, render_scene, sample_rocks, sample_scene
from lunar_cli.data.synthetic import generate_synthetic

W, H, COUNT, REAL = 96, 64, 8, 3
GROUND, SKY, SMALL, LARGE = 0, 1, 2, 3
MANY_REAL = 16  # enough real-like photos to see how they vary
# sha256 of the decoded pixels of `made`'s renders and masks (images/render, clean, ground 1..8 in turn) and
# of render_scene(default_rng(i), 480, 320) for i = 0, 1, 2: computed on the code before real-like
# photos got their own views (no sky, close rocks, tint, exposure), which must leave renders as they were.
RENDERS_SHA256 = "3a2aa65fda0cc7d509098ac6728109b0a8f891835d302dd7a9a17f3435dc963c"
RENDER_SCENE_SHA256 = "baf208730d237927435c04e6bb1228481e2d577f14e593db3e7bd2ba4efb6920"


def make(root: Path, seed: int = 7, workers: int = 1) -> dict:
    return generate_synthetic(root, count=COUNT, real_count=REAL, width=W, height=H, seed=seed,
                              workers=workers, progress=False)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synthetic") / "data"
    return root, make(root)


@pytest.fixture(scope="module")
def real_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("real") / "data"
    generate_synthetic(root, count=1, real_count=MANY_REAL, width=160, height=96, seed=3, workers=1, progress=False)
    return root


def real_photos(root: Path, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    folder = root / "real_moon_images"
    return [(read_image_rgb(folder / f"PCAM{i}.png"), read_mask(folder / f"g_PCAM{i}.png")[0]) for i in range(1, count + 1)]


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def masks(root: Path, folder: str, prefix: str) -> list[np.ndarray]:
    return [read_mask(root / folder / f"{prefix}{i:04d}.png")[0] for i in range(1, COUNT + 1)]


def test_layout_names_and_summary(made):
    root, summary = made
    names = set(files(root))
    expected = {f"images/{kind}/{kind}{i:04d}.png"
                for kind in ("render", "clean", "ground") for i in range(1, COUNT + 1)}
    expected |= {f"real_moon_images/{p}PCAM{i}.png" for p in ("", "g_") for i in range(1, REAL + 1)}
    assert names == expected
    assert summary["counts"] == {"images/render": COUNT, "images/clean": COUNT, "images/ground": COUNT,
                                 "real_moon_images": REAL}
    assert (summary["width"], summary["height"], summary["seed"]) == (W, H, 7)
    assert sum(summary["class_share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert summary["class_share"]["ground"] > 0.5
    assert read_image_rgb(root / "images/render/render0001.png").shape == (H, W, 3)


def test_same_seed_gives_identical_bytes_whatever_the_workers(made, tmp_path):
    root, summary = made
    again = make(tmp_path / "two_workers", workers=2)
    assert files(tmp_path / "two_workers") == files(root)
    assert again["class_share"] == summary["class_share"]


def test_real_like_photos_are_the_same_whatever_the_workers(real_set, tmp_path):
    generate_synthetic(tmp_path / "data", count=1, real_count=MANY_REAL, width=160, height=96, seed=3, workers=2,
                       progress=False)
    assert files(tmp_path / "data") == files(real_set)


def test_renders_are_as_before_real_like_views(made):
    root, _ = made
    digest = hashlib.sha256()  # of decoded pixels, so a different PNG encoder does not matter
    for i in range(1, COUNT + 1):
        digest.update(read_image_rgb(root / f"images/render/render{i:04d}.png").tobytes())
        digest.update(read_mask(root / f"images/clean/clean{i:04d}.png")[0].tobytes())
        digest.update(read_mask(root / f"images/ground/ground{i:04d}.png")[0].tobytes())
    assert digest.hexdigest() == RENDERS_SHA256
    digest = hashlib.sha256()
    for i in range(3):
        for array in render_scene(np.random.default_rng(i), 480, 320):
            digest.update(array.tobytes())
    assert digest.hexdigest() == RENDER_SCENE_SHA256


def test_another_seed_gives_other_images(made, tmp_path):
    root, _ = made
    make(tmp_path / "other", seed=8)
    ours, theirs = files(root), files(tmp_path / "other")
    assert all(ours[name] != theirs[name] for name in ours if "render/" in name or "PCAM" in name)


def test_masks_use_only_palette_colours(made):
    root, _ = made
    palette = {tuple(c) for c in PALETTE.tolist()}
    for path in list((root / "images/clean").glob("*.png")) + list((root / "real_moon_images").glob("g_*.png")) \
            + list((root / "images/ground").glob("*.png")):
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        assert {tuple(c) for c in np.unique(rgb.reshape(-1, 3), axis=0).tolist()} <= palette, path


def test_masks_match_the_pixels_exactly(made):
    root, _ = made
    for i, clean in enumerate(masks(root, "images/clean", "clean"), start=1):
        image = read_image_rgb(root / f"images/render/render{i:04d}.png")
        assert (image[..., 0] == image[..., 2]).all()  # rendered scenes are grey
        sky = clean == SKY
        assert image[sky].max() <= SKY_MAX  # the black sky is exactly the sky class...
        assert image[~sky].min() > SKY_MAX  # ...and nothing else is that dark


def test_clean_masks_drop_only_tiny_rocks(made):
    root, summary = made
    for clean, ground in zip(masks(root, "images/clean", "clean"), masks(root, "images/ground", "ground")):
        differ = clean != ground
        assert (clean[differ] == 0).all() and np.isin(ground[differ], [SMALL, LARGE]).all()
    assert summary["class_share_ground"]["small_rocks"] > summary["class_share"]["small_rocks"]


def test_sky_is_a_top_band_and_every_class_appears(made):
    root, summary = made
    seen = set()
    for clean in masks(root, "images/clean", "clean"):
        seen |= set(np.unique(clean).tolist())
        sky_rows = np.flatnonzero((clean == SKY).any(axis=1))
        assert sky_rows.size and sky_rows[0] == 0 and sky_rows[-1] < H // 2
        assert 0.03 < (clean == SKY).mean() < 0.45
    assert seen == {0, 1, 2, 3}
    assert all(share > 0 for share in summary["class_presence"].values())


def test_real_like_photos_look_different(made):
    root, _ = made

    def look(image: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
        g = image[..., 1].astype(np.float32)
        grain = float((g - cv2.GaussianBlur(g, (0, 0), 1.5))[mask == 0].std())
        grey = float((image[..., 0] == image[..., 2]).mean())
        return grey, float(g[mask == SKY].std()), grain

    real = [look(*photo) for photo in real_photos(root, REAL)]
    rendered = [look(read_image_rgb(root / f"images/render/render{i:04d}.png"),
                     read_mask(root / f"images/clean/clean{i:04d}.png")[0]) for i in range(1, REAL + 1)]
    for (grey, sky_noise, _), (r_grey, r_sky_noise, _) in zip(real, rendered):
        assert grey < 0.5 and r_grey == 1.0  # a colour cast and colour noise
        assert sky_noise > 3 * max(r_sky_noise, 1.0)  # sensor noise shows in the black sky
    # blur takes the crisp regolith grain away (an over-exposed photo may gain some back)
    assert np.median([grain for *_, grain in real]) < np.median([grain for *_, grain in rendered])


def test_real_like_views_include_no_sky_and_close_large_rocks(real_set):
    masks = [mask for _, mask in real_photos(real_set, MANY_REAL)]
    no_sky = np.mean([not (mask == SKY).any() for mask in masks])
    assert 0.2 <= no_sky <= 0.6  # cameras looking down at the ground, as in many Chang'e-3 photos
    assert sum((mask == LARGE).mean() > 0.1 for mask in masks) >= 2  # a large rock right in front of the camera
    assert all((mask == GROUND).mean() > 0.3 for mask in masks)


def test_real_like_tint_and_exposure_vary(real_set):
    red_blue, brightness, clipped = [], [], []
    for image, mask in real_photos(real_set, MANY_REAL):
        lit = image[mask != SKY].astype(np.float32)
        red_blue.append(lit[:, 0].mean() / lit[:, 2].mean())
        brightness.append(lit.mean())
        clipped.append((image == 255).any(axis=-1).mean())
    assert min(red_blue) < 1.0 and max(red_blue) > 1.4  # slightly cool to strongly brown
    assert max(brightness) > 2.5 * min(brightness)  # under- and over-exposed photos
    assert max(clipped) > 0.02  # over-exposure clips the highlights


def test_real_like_scenes_keep_exact_masks():
    """Looking down with no sky, or with a close rock hiding the horizon, the mask still follows the pixels."""
    no_sky = close_rock = 0
    for i in range(12):
        image, raw, clean = render_scene(np.random.default_rng(i), 160, 96, real=True)
        sky = raw == SKY
        assert image[sky].max(initial=0) <= SKY_MAX and image[~sky].min() > SKY_MAX
        assert ((clean == raw) | (clean == GROUND)).all()
        no_sky += not sky.any()
        close_rock += (clean == LARGE).mean() > 0.1
    assert no_sky and close_rock


def test_scene_statistics_look_like_the_dataset():
    """Over many scenes: most have small and large rocks, sky ~10-30%, rocks grow toward the bottom."""
    stats = []
    near_far = []
    for i in range(40):
        _, _, clean = render_scene(np.random.default_rng(i), 160, 96)
        stats.append(((clean == SKY).mean(), (clean == SMALL).any(), (clean == LARGE).any()))
        n, labels, boxes, centres = cv2.connectedComponentsWithStats((clean == LARGE).astype(np.uint8))
        near_far += [(centres[k][1], boxes[k][cv2.CC_STAT_AREA]) for k in range(1, n)]
    sky, small, large = (np.array(col, dtype=float) for col in zip(*stats))
    assert 0.1 < sky.mean() < 0.3
    assert 0.75 <= small.mean() <= 1.0 and 0.5 <= large.mean() <= 0.95
    rows, areas = np.array(near_far).T
    assert areas[rows > 96 * 0.7].mean() > 2 * areas[rows < 96 * 0.45].mean()


def test_rocks_are_drawn_far_to_near_so_near_ones_cover_far_ones():
    for i in range(5):
        rng = np.random.default_rng(i)
        rocks = sample_rocks(rng, sample_scene(rng, 480, 320))
        rows = [rock.y for rock in rocks]
        assert len(rocks) > 10 and rows == sorted(rows)
        # lower in the frame is nearer (the roll is a few degrees at most)
        near, far = rocks[len(rocks) // 2:], rocks[:len(rocks) // 2]
        assert np.mean([r.depth for r in near]) < np.mean([r.depth for r in far])


@pytest.mark.parametrize("kwargs, message", [
    ({"count": 0}, "count must be at least 1"),
    ({"real_count": -1}, "real_count must be 0 or more"),
    ({"width": 16}, "at least 32x32"),
    ({"height": 31}, "at least 32x32"),
    ({"seed": -1}, "seed must be 0 or more"),
    ({"workers": 0}, "workers must be at least 1"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, kwargs, message):
    args = {"count": 2, "real_count": 0, "width": 64, "height": 48, "seed": 0, "workers": 1, "progress": False}
    with pytest.raises(LunarError, match=message):
        generate_synthetic(tmp_path / "data", **{**args, **kwargs})
    assert not (tmp_path / "data").exists()  # nothing written before the arguments are checked
