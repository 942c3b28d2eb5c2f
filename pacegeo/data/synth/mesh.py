"""Ground-truth mesh of a scene: every surface subdivided densely, coloured with its albedo, the
vertices a set of frames observed, and a binary PLY writer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from pacegeo.data.synth.albedo import _albedo, _Hits
from pacegeo.data.synth.render import _gamma_lut
from pacegeo.data.synth.scene import Scene


@lru_cache(maxsize=512)
def _quad_template(n1: int, n2: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid of ``(n1+1) x (n2+1)`` points on the unit square: coordinates ``a``, ``b`` ``[P,1]`` and faces."""
    A, B = np.meshgrid(np.linspace(0, 1, n1 + 1), np.linspace(0, 1, n2 + 1), indexing="ij")
    i, j = np.meshgrid(np.arange(n1), np.arange(n2), indexing="ij")
    v00 = (i * (n2 + 1) + j).ravel()
    v10, v01, v11 = v00 + n2 + 1, v00 + 1, v00 + n2 + 2
    faces = np.concatenate([np.stack([v00, v10, v11], 1), np.stack([v00, v11, v01], 1)])
    return A.reshape(-1, 1), B.reshape(-1, 1), faces


@lru_cache(maxsize=512)
def _triangle_template(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Barycentric grid with ``n`` subdivisions per edge: coordinates ``a``, ``b`` ``[P,1]`` and faces."""
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = (i + j) <= n
    index = np.full((n + 2, n + 2), -1)
    index[i[keep], j[keep]] = np.arange(keep.sum())
    fi, fj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    up = (fi + fj) <= n - 1
    down = (fi + fj) <= n - 2
    f_up = np.stack([index[fi, fj], index[fi + 1, fj], index[fi, fj + 1]], -1)[up]
    f_down = np.stack([index[fi + 1, fj], index[fi + 1, fj + 1], index[fi, fj + 1]], -1)[down]
    return (i[keep] / n).reshape(-1, 1), (j[keep] / n).reshape(-1, 1), np.concatenate([f_up, f_down])


def _grid_quad(o: np.ndarray, e1: np.ndarray, e2: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``[P,3]`` and faces of a quad subdivided to edges of at most ``spacing``."""
    n1 = max(1, int(math.ceil(np.linalg.norm(e1) / spacing)))
    n2 = max(1, int(math.ceil(np.linalg.norm(e2) / spacing)))
    a, b, faces = _quad_template(n1, n2)
    return o + a * e1 + b * e2, faces


def _grid_triangle(tri: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``[P,3]`` and faces of a triangle subdivided to edges of at most ``spacing``."""
    edges = np.linalg.norm(tri - tri[[1, 2, 0]], axis=1)
    n = max(1, int(math.ceil(edges.max() / spacing)))
    a, b, faces = _triangle_template(n)
    return tri[0] + a * (tri[1] - tri[0]) + b * (tri[2] - tri[0]), faces


@dataclass(frozen=True)
class SceneMesh:
    """Dense ground-truth mesh: ``vertices`` ``[V,3]`` float64, ``faces`` ``[F,3]`` int64,
    ``colors`` ``[V,3]`` uint8 sRGB albedo, ``normals`` ``[V,3]`` (face normals of their surface)."""

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray
    normals: np.ndarray

    def subset(self, keep: np.ndarray) -> SceneMesh:
        """Keep vertices where ``keep`` ``[V]`` is True, and the faces whose vertices are all kept."""
        new_index = np.cumsum(keep) - 1
        faces = self.faces[keep[self.faces].all(1)]
        return SceneMesh(self.vertices[keep], new_index[faces], self.colors[keep], self.normals[keep])


def scene_mesh(scene: Scene, spacing: float | None = None) -> SceneMesh:
    """All surfaces of ``scene`` as a dense mesh (vertex spacing <= ``spacing``, default from config)."""
    spacing = scene.config.mesh_spacing if spacing is None else spacing
    verts, faces, gids, norms = [], [], [], []
    count = 0
    for gi, g in enumerate(scene.geometries):
        o, e1, e2 = g.quads
        quad_n = np.cross(e1, e2)
        tri_n = np.cross(g.tris[:, 1] - g.tris[:, 0], g.tris[:, 2] - g.tris[:, 0])
        parts = [_grid_quad(o[k], e1[k], e2[k], spacing) for k in range(len(o))]
        parts += [_grid_triangle(t, spacing) for t in g.tris]
        normals = np.concatenate([quad_n, tri_n])
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        for (v, f), n in zip(parts, normals):
            verts.append(v)
            faces.append(f + count)
            gids.append(np.full(len(v), gi))
            norms.append(np.broadcast_to(n, v.shape))
            count += len(v)
    V = np.concatenate(verts)
    G = np.concatenate(gids)
    N = np.concatenate(norms)
    V32, N32 = V.astype(np.float32), N.astype(np.float32)
    hits = _Hits(V32[:, 0], V32[:, 1], V32[:, 2], N32[:, 0], N32[:, 1], N32[:, 2])
    albedo = _albedo(scene._tables, G, hits, np.full(len(G), spacing, np.float32))  # vertex = local average
    colors = _gamma_lut()[(albedo * 4095).astype(np.int16)]
    return SceneMesh(V, np.concatenate(faces).astype(np.int64), colors, N)


def mesh_visibility(mesh: SceneMesh, depth: np.ndarray, K: np.ndarray, cam_to_world: np.ndarray,
                    tol: float = 0.02) -> np.ndarray:
    """``[V]`` bool: vertices that ``depth`` (``[H,W]``, z metres) shows unoccluded from this camera."""
    h, w = depth.shape
    R, c = cam_to_world[:3, :3], cam_to_world[:3, 3]
    q = [mesh.vertices[:, k] - c[k] for k in range(3)]
    # camera coordinates R^T (X - c), written elementwise (no BLAS threads)
    x, y, z = (q[0] * R[0, k] + q[1] * R[1, k] + q[2] * R[2, k] for k in range(3))
    front = z > 1e-3
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.rint((K[0, 0] * x + K[0, 1] * y) / z + K[0, 2])
        v = np.rint(K[1, 1] * y / z + K[1, 2])
    inside = front & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    idx = np.flatnonzero(inside)
    d = depth[v[idx].astype(int), u[idx].astype(int)]
    vis = np.zeros(len(z), bool)
    vis[idx] = (d > 0) & (np.abs(z[idx] - d) <= tol + 0.01 * d)
    return vis


def write_mesh_ply(mesh: SceneMesh, path: Path) -> None:
    """Write a binary little-endian PLY: double ``x y z`` and uchar ``red green blue`` per vertex,
    triangles as ``uchar``-counted ``uint`` index lists. Any write error raises (a full disk
    never leaves a silently truncated mesh)."""
    vertices = np.empty(len(mesh.vertices), dtype=[("xyz", "<f8", 3), ("rgb", "u1", 3)])
    vertices["xyz"], vertices["rgb"] = mesh.vertices, mesh.colors
    faces = np.empty(len(mesh.faces), dtype=[("n", "u1"), ("idx", "<u4", 3)])
    faces["n"], faces["idx"] = 3, mesh.faces
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment SynthRooms scene mesh\n"
        f"element vertex {len(vertices)}\nproperty double x\nproperty double y\nproperty double z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        f"element face {len(faces)}\nproperty list uchar uint vertex_indices\nend_header\n"
    )
    with open(path, "wb") as handle:
        handle.write(header.encode("ascii"))
        handle.write(vertices.tobytes())
        handle.write(faces.tobytes())
