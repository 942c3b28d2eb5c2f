"""SynthRooms: procedurally generated indoor RGB-D scans with exact ground truth.

A scene is a closed room (rectangular or L-shaped) with furniture-like objects, posters, a door,
optional windows and rugs, every surface textured procedurally (wood, tiles, brick, noise, stripes,
text-like posters) and lit by 2-4 point lights. Frames are rendered by ray casting
(``open3d.t.geometry.RaycastingScene``) along a smooth hand-held-like camera path.

Conventions (shared with :mod:`pacegeo.data.frames`):

* world frame: metres, z up, floor at z = 0;
* cameras: OpenCV (x right, y down, z forward); poses are 4x4 camera-to-world;
* pixel ``(u, v)`` (column, row) has its centre at image coordinate ``(u, v)``: the rendered ray of
  pixel ``(u, v)`` is ``K^-1 @ [u, v, 1]``, so the default principal point is ``((W-1)/2, (H-1)/2)``;
* depth is z-depth in metres (float32), 0 where the ray leaves the room (windows).

In memory (training)::

    scene = make_scene(seed)
    poses = make_trajectory(scene, num_frames=64)           # [N,4,4] camera-to-world
    K = scene_intrinsics(scene, width, height)               # [3,3]
    rgb, depth = render_frame(scene, poses[0], K, width, height)

On disk (ScanNet raw layout): :func:`generate_dataset`. Scene ``i`` is built from seed ``seed + i``
and written to ``out_dir/scene_{seed+i:05d}/``::

    color/<i>.jpg                 colour, JPEG quality ~90
    depth/<i>.png                 uint16 millimetres, 0 = invalid (no hit, or beyond 65.535 m)
    pose/<i>.txt                  4x4 camera-to-world (OpenCV camera)
    intrinsic/intrinsic_color.txt, intrinsic_depth.txt   4x4, K top-left (the same K)
    intrinsic/extrinsic_color.txt, extrinsic_depth.txt   identity
    <scene>_vh_clean_2.ply        dense mesh with vertex colours (observed surfaces)
    synth_meta.json               seed, field of view, room size, generator settings

Modules (each imports only the ones above it in this list):

* :mod:`~pacegeo.data.synth.config`: :class:`SynthConfig`, the generator's parameters;
* :mod:`~pacegeo.data.synth.textures`: procedural textures (``PAINT`` .. ``POSTER``);
* :mod:`~pacegeo.data.synth.materials`: :class:`Material` and random materials per surface role;
* :mod:`~pacegeo.data.synth.geometry`: quads, boxes, cylinders, spheres and the geometry builder;
* :mod:`~pacegeo.data.synth.room`: floor polygon, walls, door, windows;
* :mod:`~pacegeo.data.synth.layout`: floor occupancy and :class:`FreeSpace` for the camera;
* :mod:`~pacegeo.data.synth.objects`: furniture-like objects and posters;
* :mod:`~pacegeo.data.synth.albedo`: per-geometry material tables and the albedo of surface samples;
* :mod:`~pacegeo.data.synth.scene`: :class:`Scene` and :func:`make_scene`;
* :mod:`~pacegeo.data.synth.trajectory`: intrinsics, :func:`look_rotation`, :func:`make_trajectory`;
* :mod:`~pacegeo.data.synth.render`: ray casting, shading and the camera response (:func:`render_frame`);
* :mod:`~pacegeo.data.synth.mesh`: the ground-truth mesh (:func:`scene_mesh`, :func:`write_mesh_ply`);
* :mod:`~pacegeo.data.synth.preview`: the preview contact sheet;
* :mod:`~pacegeo.data.synth.writer`: scenes on disk, rendered by worker processes (:func:`generate_dataset`).

Names are looked up in the module that uses them: to replace a function for a test, patch it there
(e.g. ``pacegeo.data.synth.writer.write_mesh_ply``), not in this package namespace.
"""

from pacegeo.data.synth.config import SynthConfig
from pacegeo.data.synth.geometry import MAP_CYLINDER, MAP_SPHERE, MAP_TRIPLANAR
from pacegeo.data.synth.layout import FreeSpace
from pacegeo.data.synth.materials import Material
from pacegeo.data.synth.mesh import SceneMesh, mesh_visibility, scene_mesh, write_mesh_ply
from pacegeo.data.synth.preview import write_preview
from pacegeo.data.synth.render import cast_camera_rays, render_frame
from pacegeo.data.synth.scene import Scene, make_scene
from pacegeo.data.synth.textures import BRICK, NOISE, PAINT, POSTER, STRIPES, TILES, WOOD
from pacegeo.data.synth.trajectory import look_rotation, make_trajectory, scene_intrinsics
from pacegeo.data.synth.writer import (
    FORMAT_VERSION,
    MAX_DEPTH_MM,
    MAX_FRAMES,
    MAX_SCENES,
    MAX_SIDE,
    MIN_SIDE,
    _num_workers,  # noqa: F401  (used by eval/bench_synth.py)
    depth_to_mm,
    generate_dataset,
    generate_scenes,
    scene_name,
)

__all__ = [
    "BRICK",
    "FORMAT_VERSION",
    "MAP_CYLINDER",
    "MAP_SPHERE",
    "MAP_TRIPLANAR",
    "MAX_DEPTH_MM",
    "MAX_FRAMES",
    "MAX_SCENES",
    "MAX_SIDE",
    "MIN_SIDE",
    "NOISE",
    "PAINT",
    "POSTER",
    "STRIPES",
    "TILES",
    "WOOD",
    "FreeSpace",
    "Material",
    "Scene",
    "SceneMesh",
    "SynthConfig",
    "cast_camera_rays",
    "depth_to_mm",
    "generate_dataset",
    "generate_scenes",
    "look_rotation",
    "make_scene",
    "make_trajectory",
    "mesh_visibility",
    "render_frame",
    "scene_intrinsics",
    "scene_mesh",
    "scene_name",
    "write_mesh_ply",
    "write_preview",
]
