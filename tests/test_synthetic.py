"""Synthetic lunar scenes: layout, determinism, masks taken from the geometry, lit rocks and shadows, the photo look."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from lunar_cli.classes import PALETTE, read_image_rgb, read_mask
from lunar_cli.console import LunarError
from lunar_cli.data.camera import pixel_rays
from lunar_cli.data.rocks import intersect
from lunar_cli.data.scene import GROUND_ID, SKY_ID, SKY_MAX, render_frame, render_scene
from lunar_cli.data.synthetic import generate_synthetic
from lunar_cli.data.terrain import FAR, relief_at

W, H, COUNT, REAL = 96, 64, 8, 3
GROUND, SKY, SMALL, LARGE = 0, 1, 2, 3
MANY_REAL = 16  # enough real-like photos to see how they vary
MOON_RADIUS = 1_737_400.0


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


@pytest.fixture(scope="module")
def frames() -> list:
    """Scenes of both kinds of view, small enough to check pixel by pixel."""
    return [render_frame(np.random.default_rng(i), 160, 96, view=view)
            for i in range(10) for view in ("rover", "horizon")]


def real_photos(root: Path, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    folder = root / "real_moon_images"
    return [(read_image_rgb(folder / f"PCAM{i}.png"), read_mask(folder / f"g_PCAM{i}.png")[0])
            for i in range(1, count + 1)]


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
    assert (summary["width"], summary["height"], summary["seed"], summary["quality"]) == (W, H, 7, "fast")
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


def test_a_scene_depends_only_on_its_generator():
    for i in range(3):
        first, again = render_scene(np.random.default_rng(i), 120, 80), render_scene(np.random.default_rng(i), 120, 80)
        assert all((a == b).all() for a, b in zip(first, again))
    other = render_scene(np.random.default_rng(3), 120, 80)
    assert (other[0] != first[0]).any()


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


def test_masks_are_the_class_of_each_pixels_object(frames):
    """raw is the class of the object each ray meets; clean drops exactly the rocks too small on screen."""
    for f in frames:
        assert (f.object_id == f.ray_object).all()  # one ray per pixel in the default quality
        assert (f.raw == f.object_class[f.object_id]).all()
        assert (f.clean == np.where(f.object_kept[f.object_id], f.raw, GROUND)).all()
        assert (f.raw[f.object_id == SKY_ID] == SKY).all() and (f.raw[f.object_id == GROUND_ID] == GROUND).all()
        pixels = np.bincount(f.object_id.ravel(), minlength=len(f.object_class))[2:]
        seen = pixels > 0
        dropped, kept = seen & ~f.object_kept[2:], seen & f.object_kept[2:]
        if dropped.any() and kept.any():
            assert pixels[dropped].max() < pixels[kept].min()  # one size threshold per scene


def test_every_pixel_sees_the_first_surface_on_its_ray(frames):
    """Re-derive each pixel's object from the scene's geometry: rays, rock bodies and the terrain height field."""
    for f in frames[:8]:
        rays = pixel_rays(f.camera).reshape(-1, 3)
        ids, depth = f.ray_object.ravel(), f.depth.ravel().astype(np.float64)
        origin = f.camera.position[None, :]
        on_rock = np.flatnonzero(ids >= 2)
        t_in, _, hit, _ = intersect(f.rocks, ids[on_rock] - 2, origin, rays[on_rock])
        assert hit.all() and np.allclose(t_in, depth[on_rock], rtol=1e-4)
        ground = np.flatnonzero(ids == GROUND_ID)
        points = f.camera.position + depth[ground, None] * rays[ground]
        curvature = (points[:, :2] ** 2).sum(1) / (2 * MOON_RADIUS)
        height = relief_at(f.terrain, points[:, 0], points[:, 1])[:, 0] - curvature
        assert (np.abs(height - points[:, 2]) < 0.01 * depth[ground]).all()  # on the terrain, to the sweep's step
        not_rock = np.flatnonzero(ids < 2)
        for k in range(len(f.rocks)):  # no rock in front of the ground, none in the way of a sky ray
            t_in, _, hit, _ = intersect(f.rocks, np.full(len(not_rock), k), origin, rays[not_rock])
            assert not (hit & (t_in > 0) & (t_in < depth[not_rock])).any()
        sky = np.flatnonzero(ids == SKY_ID)
        for d in np.geomspace(1.0, FAR * 0.99, 40):  # a sky ray stays above the ground
            p = f.camera.position + d * rays[sky] / np.hypot(rays[sky, 0], rays[sky, 1])[:, None]
            below = relief_at(f.terrain, p[:, 0], p[:, 1])[:, 0] - d * d / (2 * MOON_RADIUS) - p[:, 2]
            assert (below < 0.01 * d).all()


def test_lit_rock_faces_outshine_the_ground_and_their_shadows_are_dark_ground(frames):
    bright, dark = [], []
    for f in frames:
        luma = f.image[..., 1].astype(np.float32)
        for k in np.flatnonzero(f.object_kept[2:]):
            rock = f.object_id == k + 2
            if rock.sum() < 40:
                continue
            around = cv2.dilate(rock.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
            beside = around & (f.object_id == GROUND_ID)
            lit_ground, shade = beside & ~f.shadow, beside & f.shadow
            lit_face = rock & (f.incidence > 0.5) & ~f.shadow
            if lit_ground.sum() < 10 or lit_face.sum() < 5:
                continue
            level = np.median(luma[lit_ground])
            bright.append(np.median(luma[lit_face]) > 1.1 * level)
            if shade.sum() >= 5:
                dark.append(np.median(luma[shade]) < 0.6 * level)
                assert (f.raw[shade] == GROUND).all() and (f.clean[shade] == GROUND).all()
    assert len(bright) >= 20 and np.mean(bright) > 0.8  # a face turned to the sun is brighter than lit regolith
    assert len(dark) >= 10 and all(dark)  # cast shadows are dark, and they are ground


def test_sky_pixels_are_exactly_the_sky_class(frames):
    for f in frames:
        assert (f.image[..., 0] == f.image[..., 2]).all()  # rendered scenes are grey before any photo look
        sky = f.raw == SKY
        assert f.image[sky].max(initial=0) <= SKY_MAX and f.image[~sky].min() > SKY_MAX


def test_views_range_from_horizons_with_sky_to_ground_without(frames, made):
    root, _ = made
    horizon = [f for f in frames if f.view == "horizon"]
    rover = [f for f in frames if f.view == "rover"]
    sky_share = np.array([(f.raw == SKY).mean() for f in horizon])
    assert (sky_share > 0).all() and 0.08 < sky_share.mean() < 0.4  # a black sky above the horizon
    assert sum(not (f.raw == SKY).any() for f in rover) >= len(rover) // 3  # looking down: no sky at all
    assert all(f.camera.pitch < -0.15 for f in rover if not (f.raw == SKY).any())
    renders = [read_mask(root / f"images/clean/clean{i:04d}.png")[0] for i in range(1, COUNT + 1)]
    assert any((m == SKY).any() for m in renders) and any(not (m == SKY).any() for m in renders)


def test_rocks_of_both_sizes_as_large_on_screen_as_in_the_real_masks(frames):
    areas, seen = [], set()
    for f in frames:
        seen |= set(np.unique(f.clean).tolist())
        n, _, stats, _ = cv2.connectedComponentsWithStats((f.clean >= SMALL).astype(np.uint8))
        areas += [stats[k, cv2.CC_STAT_AREA] / f.clean.size for k in range(1, n)]
    assert seen == {GROUND, SKY, SMALL, LARGE}
    # the labelled real photos and renders: median rock 0.16-0.18% of the frame, hardly any under 0.03%
    assert 0.0007 < np.median(areas) < 0.004 and np.percentile(areas, 5) > 0.0003


def test_real_like_photos_look_like_photos(made):
    root, _ = made
    for image, mask in real_photos(root, REAL):
        assert (image[..., 0] != image[..., 2]).mean() > 0.5  # a colour cast and colour noise
        assert not ((image[..., 0] == image[..., 1]) & (image[..., 1] == image[..., 2])).all()


def test_real_like_views_include_no_sky_and_close_large_rocks(real_set):
    masks = [mask for _, mask in real_photos(real_set, MANY_REAL)]
    no_sky = np.mean([not (mask == SKY).any() for mask in masks])
    assert 0.3 <= no_sky <= 0.9  # cameras looking down at the ground, as in most Chang'e-3 photos
    assert sum((mask == LARGE).mean() > 0.03 for mask in masks) >= 2  # a large rock close to the camera
    assert all((mask == GROUND).mean() > 0.3 for mask in masks)
    assert all((mask == SKY).mean() < 0.2 for mask in masks)  # at most a band of sky at the top


def test_real_like_tint_and_exposure_vary(real_set):
    red_blue, brightness = [], []
    for image, mask in real_photos(real_set, MANY_REAL):
        ground = image[mask == GROUND].astype(np.float32)
        red_blue.append(ground[:, 0].mean() / ground[:, 2].mean())
        brightness.append(ground.mean())
    assert min(red_blue) < 1.05 and max(red_blue) > 1.25  # nearly neutral to brown
    assert max(brightness) > 1.5 * min(brightness)  # under- and over-exposed photos


def test_fine_quality_casts_more_rays_per_pixel():
    f = render_frame(np.random.default_rng(1), 64, 48, view="rover", quality="fine")
    assert f.ray_object.shape == (96, 128) and f.image.shape == (48, 64, 3)
    blocks = f.ray_object.reshape(48, 2, 64, 2).transpose(0, 2, 1, 3).reshape(48, 64, 4)
    share = (blocks == f.object_id[..., None]).sum(axis=2)
    most = np.max([(blocks == blocks[..., j:j + 1]).sum(axis=2) for j in range(4)], axis=0)
    assert (share == most).all()  # each pixel takes the object most of its rays meet
    assert (f.raw == f.object_class[f.object_id]).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"count": 0}, "count must be at least 1"),
    ({"real_count": -1}, "real_count must be 0 or more"),
    ({"width": 16}, "at least 32x32"),
    ({"height": 31}, "at least 32x32"),
    ({"seed": -1}, "seed must be 0 or more"),
    ({"workers": 0}, "workers must be at least 1"),
    ({"quality": "best"}, "quality must be one of fast, fine"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, kwargs, message):
    args = {"count": 2, "real_count": 0, "width": 64, "height": 48, "seed": 0, "workers": 1, "progress": False}
    with pytest.raises(LunarError, match=message):
        generate_synthetic(tmp_path / "data", **{**args, **kwargs})
    assert not (tmp_path / "data").exists()  # nothing written before the arguments are checked


def test_bad_views_are_one_line_errors():
    with pytest.raises(LunarError, match="view must be horizon or rover"):
        render_frame(np.random.default_rng(0), 64, 48, view="orbit")
