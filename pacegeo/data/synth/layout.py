"""Floor occupancy while objects are placed, and the free space left for the camera (:class:`FreeSpace`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True, eq=False)
class FreeSpace:
    """Where the camera may go: a 2D grid over the floor.

    ``free[i, j]`` is True when cell centre ``origin + res * (j, i)`` (x, y) is inside the room,
    at least ``wall_margin`` away from walls and objects, and in the largest such region.
    ``clearance`` holds the distance (m) to the nearest wall or object; ``reachable`` marks cells
    connected to the free region without touching an obstacle (used to relax the margin slightly).
    """

    free: np.ndarray
    clearance: np.ndarray
    origin: tuple[float, float]
    res: float
    margin: float
    reachable: np.ndarray

    def cell(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row and column indices ``[n]`` of points ``[n,2]`` (clipped to the grid)."""
        j = np.clip(np.rint((xy[:, 0] - self.origin[0]) / self.res), 0, self.free.shape[1] - 1).astype(int)
        i = np.clip(np.rint((xy[:, 1] - self.origin[1]) / self.res), 0, self.free.shape[0] - 1).astype(int)
        return i, j

    def is_free(self, xy: np.ndarray, slack: float = 0.0) -> np.ndarray:
        """``[n]`` bool: points ``[n,2]`` lie in the free region (clearance relaxed by ``slack``)."""
        i, j = self.cell(xy)
        return self.free[i, j] | ((self.clearance[i, j] >= self.margin - slack) & self.reachable[i, j])

    def centres(self) -> np.ndarray:
        """``[n,2]`` xy of the free cells."""
        i, j = np.nonzero(self.free)
        return np.stack([self.origin[0] + j * self.res, self.origin[1] + i * self.res], 1)


def _footprint_mask(grid_xy: np.ndarray, centre: np.ndarray, half: np.ndarray, yaw: float,
                    pad: float = 0.0) -> np.ndarray:
    """Cells (``[...,2]`` xy) inside an oriented rectangle grown by ``pad``."""
    c, s = math.cos(yaw), math.sin(yaw)
    d = grid_xy - centre
    lx = d[..., 0] * c + d[..., 1] * s
    ly = -d[..., 0] * s + d[..., 1] * c
    return (np.abs(lx) <= half[0] + pad) & (np.abs(ly) <= half[1] + pad)


@dataclass
class _Layout:
    """Occupancy bookkeeping while placing objects."""

    grid_xy: np.ndarray  # [H,W,2] cell centres
    inside: np.ndarray  # [H,W] inside the room polygon
    occupied: np.ndarray  # [H,W] covered by objects
    reserved: np.ndarray  # [H,W] kept clear of furniture (in front of the door)
    res: float
    margin: float

    def fits(self, centre: np.ndarray, half: np.ndarray, yaw: float) -> bool:
        m = _footprint_mask(self.grid_xy, centre, half, yaw, pad=0.02)
        if not m.any():
            return False
        return bool(self.inside[m].all() and not (self.occupied[m] | self.reserved[m]).any())

    def free_space(self, occupied: np.ndarray | None = None) -> FreeSpace:
        occ = (self.occupied if occupied is None else occupied) | ~self.inside
        clearance = ndimage.distance_transform_edt(~occ) * self.res
        ok = clearance >= self.margin
        labels, n = ndimage.label(ok)
        if n == 0:
            comp = ok
        else:
            sizes = ndimage.sum(ok, labels, index=np.arange(1, n + 1))
            comp = labels == (1 + int(np.argmax(sizes)))
        region, _ = ndimage.label(clearance > 0.05)
        # The slack region: anything connected to the main component without touching obstacles.
        comp_grown = np.isin(region, np.unique(region[comp])) if comp.any() else comp
        origin = (float(self.grid_xy[0, 0, 0]), float(self.grid_xy[0, 0, 1]))
        return FreeSpace(comp, clearance, origin, self.res, self.margin, comp_grown)


def _point_in_polygon(xy: np.ndarray, poly: np.ndarray) -> np.ndarray:
    from matplotlib.path import Path as MplPath

    shape = xy.shape[:-1]
    return MplPath(poly).contains_points(xy.reshape(-1, 2)).reshape(shape)
