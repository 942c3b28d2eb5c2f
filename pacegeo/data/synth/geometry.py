"""Geometry builders: a scene is a set of geometries (raycasting ids), each made of quads and triangles.

Quads are ``(o, e1, e2)`` (corner and two edge vectors, outward normal ``e1 x e2``); triangles are
``[3,3]`` vertex rows. Parts are built in a local frame and placed with a ``[4,4]`` pose.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from pacegeo.data.synth.materials import Material


MAP_TRIPLANAR, MAP_CYLINDER, MAP_SPHERE = range(3)


@dataclass
class _Geometry:
    """One raycasting geometry: quads ``(o, e1, e2)`` ``[Q,3]`` each, triangles ``[T,3,3]`` (world)."""

    quads: tuple[np.ndarray, np.ndarray, np.ndarray]
    tris: np.ndarray
    material: Material
    R: np.ndarray  # [3,3] world -> texture frame rotation
    origin: np.ndarray  # [3] texture frame origin (world)
    mapping: int = MAP_TRIPLANAR

    def triangles(self) -> tuple[np.ndarray, np.ndarray]:
        """``(vertices [V,3] float32, faces [F,3] uint32)`` of the render mesh."""
        o, e1, e2 = self.quads
        quad_v = np.stack([o, o + e1, o + e1 + e2, o + e2], axis=1).reshape(-1, 3)
        q = np.arange(len(o))[:, None] * 4
        quad_f = np.concatenate([q + np.array([0, 1, 2]), q + np.array([0, 2, 3])], axis=0)
        tri_v = self.tris.reshape(-1, 3)
        tri_f = len(quad_v) + np.arange(len(tri_v)).reshape(-1, 3)
        verts = np.concatenate([quad_v, tri_v]).astype(np.float32)
        faces = np.concatenate([quad_f, tri_f]).astype(np.uint32)
        return verts, faces


def _yaw_matrix(yaw: float) -> np.ndarray:
    return Rotation.from_euler("z", yaw).as_matrix()


def _box_quads(size: Sequence[float], corner: Sequence[float], bottom: bool = False) -> list[tuple]:
    """Quads ``(o, e1, e2)`` of an axis-aligned box (local frame), outward normals ``e1 x e2``."""
    sx, sy, sz = size
    x0, y0, z0 = corner
    x1, y1, z1 = x0 + sx, y0 + sy, z0 + sz
    X, Y, Z = np.array([sx, 0, 0]), np.array([0, sy, 0]), np.array([0, 0, sz])
    quads = [
        ((x0, y0, z1), X, Y),  # top
        ((x0, y0, z0), X, Z),  # -y
        ((x0, y1, z0), Z, X),  # +y
        ((x0, y0, z0), Z, Y),  # -x
        ((x1, y0, z0), Y, Z),  # +x
    ]
    if bottom:
        quads.append(((x0, y0, z0), Y, X))
    return [(np.asarray(o, float), e1.astype(float), e2.astype(float)) for o, e1, e2 in quads]


def _cylinder_parts(radius: float, z0: float, z1: float, segments: int = 24,
                    caps: bool = True) -> tuple[list[tuple], list[np.ndarray]]:
    """Side quads and top-cap triangles of a vertical cylinder around the local z axis."""
    ang = np.linspace(0, 2 * np.pi, segments + 1)
    ring = np.stack([radius * np.cos(ang), radius * np.sin(ang)], 1)
    quads = []
    for k in range(segments):
        a, b = ring[k], ring[k + 1]
        quads.append((np.array([a[0], a[1], z0]), np.array([b[0] - a[0], b[1] - a[1], 0.0]),
                      np.array([0.0, 0.0, z1 - z0])))
    tris = []
    if caps:
        c = np.array([0.0, 0.0, z1])
        for k in range(segments):
            tris.append(np.stack([c, np.r_[ring[k], z1], np.r_[ring[k + 1], z1]]))
    return quads, tris


def _sphere_tris(radius: float, centre: Sequence[float], rings: int = 12, segments: int = 24) -> np.ndarray:
    """``[T,3,3]`` outward-facing triangles of a UV sphere."""
    th = np.linspace(0, np.pi, rings + 1)
    ph = np.linspace(0, 2 * np.pi, segments + 1)
    T, P = np.meshgrid(th, ph, indexing="ij")
    pts = radius * np.stack([np.sin(T) * np.cos(P), np.sin(T) * np.sin(P), np.cos(T)], -1) + np.asarray(centre)
    a, b, c, d = pts[:-1, :-1], pts[1:, :-1], pts[1:, 1:], pts[:-1, 1:]
    upper = np.stack([a, b, d], 2)[1:].reshape(-1, 3, 3)  # no degenerate triangles at the poles
    lower = np.stack([b, c, d], 2)[:-1].reshape(-1, 3, 3)
    tris = np.concatenate([upper, lower])
    n = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    inward = np.einsum("ij,ij->i", n, tris.mean(1) - np.asarray(centre)) < 0
    tris[inward] = tris[inward][:, [0, 2, 1]]
    return tris


@dataclass
class _Builder:
    """Collects geometries in world coordinates."""

    geoms: list[_Geometry] = field(default_factory=list)

    def add(self, quads: list[tuple], tris: list[np.ndarray] | np.ndarray, material: Material,
            pose: np.ndarray | None = None, mapping: int = MAP_TRIPLANAR) -> None:
        """Add parts given in a local frame: quads ``(o, e1, e2)`` and triangles (``[3,3]`` each or
        ``[T,3,3]``); ``pose`` is a ``[4,4]`` local-to-world transform."""
        T = np.eye(4) if pose is None else pose
        R, t = T[:3, :3], T[:3, 3]
        if quads:
            o = np.stack([q[0] for q in quads]) @ R.T + t
            e1 = np.stack([q[1] for q in quads]) @ R.T
            e2 = np.stack([q[2] for q in quads]) @ R.T
        else:
            o = e1 = e2 = np.zeros((0, 3))
        if isinstance(tris, np.ndarray):
            tri = tris.reshape(-1, 3, 3)
        else:
            parts = [np.asarray(x, float).reshape(-1, 3, 3) for x in tris]
            tri = np.concatenate(parts) if parts else np.zeros((0, 3, 3))
        tri = tri @ R.T + t
        self.geoms.append(_Geometry((o, e1, e2), tri, material, R.T.copy(), t.copy(), mapping))


def _pose(x: float, y: float, z: float = 0.0, yaw: float = 0.0) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = _yaw_matrix(yaw)
    T[:3, 3] = (x, y, z)
    return T
