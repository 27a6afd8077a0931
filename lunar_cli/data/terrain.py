"""The ground as a height field: hills, a swell of metre-scale undulation, and bowl craters with raised rims.

Heights come with their slopes, so shading never differentiates a rasterised surface. The
terrain is evaluated either at scattered points (rock bases, the ground under the camera)
or on the camera's polar grid (``relief_polar``: one row per distance, one column per
azimuth), where each crater touches only the block of the grid it covers. Craters also
say which of their floor points the sun cannot see over their rim (``CraterShadow``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from lunar_cli.data.regolith import fractal_fields, remap_points, slopes

HILLS_SPAN = 2400.0  # metres covered by the hills grid, centred on the camera (it sees up to FAR)
FAR = 1000.0  # metres: the farthest ground a ray can hit; beyond it is sky
SWELL_TILE = 64.0  # metres: the tile of the metre-scale undulation
CRATER_PIXELS = 8.0  # craters smaller than this radius on screen are not made (they would not show)


@dataclass(frozen=True)
class Craters:
    """Bowl craters: centre (x, y), rim radius, floor depth below the rim and rim height above the plain (metres)."""

    x: np.ndarray
    y: np.ndarray
    radius: np.ndarray
    depth: np.ndarray
    rim: np.ndarray


@dataclass(frozen=True)
class Terrain:
    """The height field of one scene: hills and swell grids (height, d/dx, d/dy channels) and craters."""

    hills: np.ndarray  # (N, N, 3), HILLS_SPAN metres square, rows along +y
    swell: np.ndarray  # (M, M, 3), tileable, SWELL_TILE metres square
    craters: Craters


def _grid_with_slopes(height: np.ndarray, texel: float) -> np.ndarray:
    gx, gy = slopes(height, texel)
    return np.stack([height, gx, gy], axis=2).astype(np.float32)


def _scaled(field: np.ndarray, texel: float, rms_slope: float) -> np.ndarray:
    gx, gy = slopes(field, texel)
    return field * (rms_slope / math.sqrt(float((gx ** 2 + gy ** 2).mean())))


def sample_terrain(rng: np.random.Generator, view: str, focal: float, azimuths: tuple[float, float],
                   above_ground: float) -> Terrain:
    """Return random terrain for a view: hilly for horizon views, gentler mare plains for rover views.

    focal (pixels) and the azimuth range the camera sees decide where craters are worth making.
    """
    hilly = view == "horizon"
    n = 256
    hill_slope = math.tan(math.radians(math.exp(rng.uniform(math.log(1.5), math.log(14.0))) if hilly
                                       else rng.uniform(0.3, 3.0)))
    hills = _scaled(fractal_fields(rng, n, 3.6, lowest=5.0)[0], HILLS_SPAN / n, hill_slope)
    m = 128
    swell_slope = math.tan(math.radians(rng.uniform(2.0, 8.0) if hilly else rng.uniform(1.0, 4.0)))
    swell = _scaled(fractal_fields(rng, m, 3.2, lowest=2.0)[0], SWELL_TILE / m, swell_slope)
    density = math.exp(rng.uniform(math.log(0.002), math.log(0.03 if hilly else 0.012)))
    return Terrain(_grid_with_slopes(hills, HILLS_SPAN / n), _grid_with_slopes(swell, SWELL_TILE / m),
                   sample_craters(rng, density, focal, azimuths, above_ground))


def sample_craters(rng: np.random.Generator, density: float, focal: float, azimuths: tuple[float, float],
                   above_ground: float) -> Craters:
    """Return craters over the ground the camera sees: N(radius > r) = density / r**2 per square metre.

    Distances go in bands growing 1.5x; in each band only craters at least CRATER_PIXELS in radius on
    screen are drawn (Pareto sizes above that; far away, ground seen edge-on squeezes them to slivers
    and only large ones are worth it), so far bands hold few, large craters.
    """
    lo, hi = azimuths[0] - 0.2, azimuths[1] + 0.2
    parts = []
    d0 = 0.4
    while d0 < FAR * 0.6:
        d1 = d0 * 1.5
        r_min = max(0.15, CRATER_PIXELS * d1 / focal * math.sqrt(max(d1 / above_ground, 1.0)))
        area = (hi - lo) / 2 * (d1 * d1 - d0 * d0)
        count = min(rng.poisson(density * area / r_min ** 2), 8)
        u = rng.random((count, 5))
        radius = np.minimum(r_min / np.sqrt(u[:, 0] + 1e-9), min(60.0, 0.4 * d1))
        dist = np.sqrt(d0 * d0 + u[:, 1] * (d1 * d1 - d0 * d0))
        phi = lo + u[:, 2] * (hi - lo)
        fresh = u[:, 3]  # 0 = worn down to a shallow dish, 1 = fresh bowl
        depth = 2 * radius * (0.02 + 0.16 * fresh ** 1.5)
        rim = depth * (0.05 + 0.3 * fresh) * (0.7 + 0.6 * u[:, 4])
        parts.append((dist * np.sin(phi), dist * np.cos(phi), radius, depth, rim))
        d0 = d1
    x, y, radius, depth, rim = (np.concatenate(col) for col in zip(*parts))
    return Craters(x, y, radius, depth, rim)


def _grid_relief(terrain: Terrain, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Return (..., 3) height and slopes of hills plus swell at points (x, y) of any shape."""
    n, m = terrain.hills.shape[0], terrain.swell.shape[0]
    hx, hy = (x + HILLS_SPAN / 2) * (n / HILLS_SPAN) - 0.5, (y + HILLS_SPAN / 2) * (n / HILLS_SPAN) - 0.5
    sx, sy = x * (m / SWELL_TILE) - 0.5, y * (m / SWELL_TILE) - 0.5
    if x.ndim == 2 and max(x.shape) < 32767:  # a grid: cv2.remap takes it as it is
        hills = cv2.remap(terrain.hills, hx, hy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return hills + cv2.remap(terrain.swell, sx, sy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
    hills = remap_points(terrain.hills, hx.ravel(), hy.ravel())
    swell = remap_points(terrain.swell, sx.ravel(), sy.ravel(), border="wrap")
    return (hills + swell).reshape(*x.shape, 3)


def crater_profile(c: Craters, k: int, dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (height, d/dx, d/dy) of crater k at offsets (dx, dy) from its centre: bowl, sharp rim, ejecta skirt."""
    r = c.radius[k]
    rho = np.sqrt(dx * dx + dy * dy) / r
    inside = rho < 1
    skirt = np.maximum(2 - rho, 0)
    h = np.where(inside, c.rim[k] + c.depth[k] * (rho * rho - 1), c.rim[k] * skirt * skirt)
    dh = np.where(inside, 2 * c.depth[k] * rho, -2 * c.rim[k] * skirt) / r  # d height / d distance
    scale = dh / np.maximum(rho * r, 1e-6)
    return h, scale * dx, scale * dy


def relief_at(terrain: Terrain, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Return (N, 3) height, d/dx, d/dy of the terrain at a few scattered points (N, ) (every crater is tried)."""
    out = _grid_relief(terrain, x, y)
    c = terrain.craters
    for k in range(len(c.radius)):
        dx, dy = x - c.x[k], y - c.y[k]
        near = dx * dx + dy * dy < 4 * c.radius[k] ** 2
        if near.any():
            h, gx, gy = crater_profile(c, k, dx[near], dy[near])
            out[near] += np.stack([h, gx, gy], axis=1)
    return out


@dataclass(frozen=True)
class PolarGrid:
    """Sample points of the ground: row j at distance dist[j] from the camera, column i at azimuth phi[i]."""

    phi: np.ndarray  # (W,) radians from +y toward +x, evenly spaced
    dist: np.ndarray  # (D,) metres, growing by a fixed ratio

    @property
    def xy(self) -> tuple[np.ndarray, np.ndarray]:
        return (self.dist[:, None] * np.sin(self.phi)[None, :]).astype(np.float32), \
            (self.dist[:, None] * np.cos(self.phi)[None, :]).astype(np.float32)

    def rows(self, d0: float, d1: float) -> slice:
        ratio = math.log(self.dist[1] / self.dist[0])
        j0 = math.floor(math.log(max(d0, self.dist[0]) / self.dist[0]) / ratio)
        j1 = math.ceil(math.log(max(d1, self.dist[0]) / self.dist[0]) / ratio) + 1
        return slice(max(j0, 0), min(j1, len(self.dist)))

    def columns(self, p0: float, p1: float) -> slice:
        step = self.phi[1] - self.phi[0]
        return slice(max(math.floor((p0 - self.phi[0]) / step), 0), min(math.ceil((p1 - self.phi[0]) / step) + 1,
                                                                         len(self.phi)))


@dataclass(frozen=True)
class CraterShadow:
    """The sun's elevation and horizontal direction (toward it), for crater floors hidden by their rims."""

    tan_elevation: float
    toward: tuple[float, float]


def relief_polar(terrain: Terrain, grid: PolarGrid, sun: CraterShadow) -> tuple[np.ndarray, np.ndarray]:
    """Return the terrain on the polar grid, (D, W, 3) height and slopes, and the (D, W) crater-shadow margin.

    The margin is how far (metres) the rim rises above the line toward the sun from a crater-floor
    point (positive: in the rim's shadow; very negative outside every crater).
    """
    x, y = grid.xy
    out = _grid_relief(terrain, x, y)
    margin = np.full(x.shape, -1e3, np.float32)
    c = terrain.craters
    sx, sy = sun.toward
    for k in range(len(c.radius)):
        reach = 2 * c.radius[k]
        d0 = math.hypot(c.x[k], c.y[k])
        if d0 - reach > grid.dist[-1]:
            continue
        phi0 = math.atan2(c.x[k], c.y[k])
        half = math.asin(reach / d0) if d0 > reach else math.pi
        block = grid.rows(d0 - reach, d0 + reach), grid.columns(phi0 - half, phi0 + half)
        if block[0].start >= block[0].stop or block[1].start >= block[1].stop:
            continue
        dx, dy = x[block] - c.x[k], y[block] - c.y[k]
        h, gx, gy = crater_profile(c, k, dx, dy)
        out[block] += np.stack([h, gx, gy], axis=2)
        along = dx * sx + dy * sy
        rho2 = (dx * dx + dy * dy) / c.radius[k] ** 2
        exit_ = np.where(rho2 < 1, -along + np.sqrt(np.maximum(along * along + c.radius[k] ** 2 * (1 - rho2), 0)), 0)
        # outside the rim the margin goes on falling smoothly, so interpolating it keeps the shadow's edge sharp
        np.maximum(margin[block], c.depth[k] * (1 - rho2) - sun.tan_elevation * exit_, out=margin[block])
    return out, margin
