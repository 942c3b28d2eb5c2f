"""Writing SynthRooms scenes in the ScanNet raw layout (:func:`generate_dataset`).

Each scene folder ``scene_{seed:05d}/`` holds ``color/<i>.jpg``, ``depth/<i>.png`` (uint16
millimetres, 0 = invalid), ``pose/<i>.txt`` (4x4 camera-to-world, OpenCV camera), ``intrinsic/``
(4x4 intrinsics and identity extrinsics), ``<scene>_vh_clean_2.ply`` (dense mesh with vertex
colours) and ``synth_meta.json``; see :func:`generate_dataset` for the details. Frames are rendered
in chunks, in worker processes for large jobs, and all scenes appear together when complete.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import sys
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pacegeo.data.synth.config import SynthConfig
from pacegeo.data.synth.mesh import SceneMesh, mesh_visibility, scene_mesh, write_mesh_ply
from pacegeo.data.synth.preview import write_preview
from pacegeo.data.synth.render import _set_cast_threads, render_frame
from pacegeo.data.synth.scene import Scene, make_scene
from pacegeo.data.synth.trajectory import make_trajectory, scene_intrinsics
from pacegeo.errors import InputError, OutputError, option
from pacegeo.io.outputs import OutputSet, OutputSpec, describe_os_error
from pacegeo.options import check_count, check_seed


#: Limits of the generator's options (sides in pixels, frames per scene).
MIN_SIDE, MAX_SIDE, MAX_FRAMES, MAX_SCENES = 16, 4096, 100_000, 100_000

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAX_DEPTH_MM = 65535


def depth_to_mm(depth: np.ndarray) -> np.ndarray:
    """``[H,W]`` metres -> uint16 millimetres; non-finite, <= 0 or beyond 65.535 m become 0."""
    with np.errstate(invalid="ignore"):
        mm = np.rint(np.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0) * 1000.0)
    mm[(mm < 0) | (mm > MAX_DEPTH_MM)] = 0
    return mm.astype(np.uint16)


def scene_name(seed: int) -> str:
    """Folder name of the scene built from ``seed`` (e.g. ``scene_00042``)."""
    return f"scene_{seed:05d}"


def _write_matrix(path: Path, M: np.ndarray) -> None:
    np.savetxt(path, M, fmt="%.9f")


def _intrinsic4(K: np.ndarray) -> np.ndarray:
    M = np.eye(4)
    M[:3, :3] = K
    return M


def _write_frame(scene_dir: Path, i: int, rgb: np.ndarray, depth: np.ndarray, pose: np.ndarray,
                 quality: int) -> None:
    Image.fromarray(rgb).save(scene_dir / "color" / f"{i}.jpg", quality=quality)
    Image.fromarray(depth_to_mm(depth)).save(scene_dir / "depth" / f"{i}.png", compress_level=1)
    _write_matrix(scene_dir / "pose" / f"{i}.txt", pose)


@dataclass(frozen=True)
class _ChunkJob:
    """Frames ``indices`` of the scene built from ``seed``, to render into ``scene_dir``."""

    seed: int
    config: SynthConfig
    scene_dir: Path
    num_frames: int
    width: int
    height: int
    indices: tuple[int, ...]
    thumbs: tuple[int, ...]
    vis_every: int = 1


@dataclass(frozen=True)
class _ChunkResult:
    """What a rendered chunk sends back: subsampled depth maps for the mesh visibility test
    (``vis_depth[i]`` is ``depth[::vis_stride, ::vis_stride]``) and preview frames."""

    seed: int
    indices: tuple[int, ...]
    vis_depth: dict[int, np.ndarray]
    vis_stride: int
    thumbs: dict[int, tuple[np.ndarray, np.ndarray]]


_SCENE_CACHE: dict[tuple, tuple[Scene, np.ndarray]] = {}


def _cached_scene(seed: int, config: SynthConfig, num_frames: int) -> tuple[Scene, np.ndarray]:
    """Scene and trajectory for ``seed``, kept for the next chunks of the same scene."""
    key = (seed, config, num_frames)
    if key not in _SCENE_CACHE:
        while len(_SCENE_CACHE) >= 4:
            _SCENE_CACHE.pop(next(iter(_SCENE_CACHE)))
        scene = make_scene(seed, config)
        _SCENE_CACHE[key] = (scene, make_trajectory(scene, num_frames))
    return _SCENE_CACHE[key]


def _render_chunk(job: _ChunkJob) -> _ChunkResult:
    """Render and write a chunk of frames (runs in a worker process or in-process)."""
    scene, poses = _cached_scene(job.seed, job.config, job.num_frames)
    K = scene_intrinsics(scene, job.width, job.height)
    stride = max(1, job.width // 160)
    vis, thumbs = {}, {}
    pending: list[Future] = []
    with ThreadPoolExecutor(max_workers=1) as pool:  # encoding overlaps with the next render
        for i in job.indices:
            rgb, depth = render_frame(scene, poses[i], K, job.width, job.height, frame_index=i)
            pending.append(pool.submit(_write_frame, job.scene_dir, i, rgb, depth, poses[i],
                                       job.config.jpeg_quality))
            if i % job.vis_every == 0 or i == job.num_frames - 1:
                vis[i] = depth[::stride, ::stride].copy()
            if i in job.thumbs:
                thumbs[i] = (rgb, depth)
            while len(pending) > 2:
                pending.pop(0).result()
        for f in pending:
            f.result()
    return _ChunkResult(job.seed, job.indices, vis, stride, thumbs)


def _init_worker() -> None:
    _set_cast_threads(1)  # one process per core already


def _num_workers(total_pixels: int) -> int:
    """Worker processes for a job: one per available core (``PACEGEO_SYNTH_WORKERS`` overrides);
    small jobs and platforms without ``fork`` render in-process."""
    env = os.environ.get("PACEGEO_SYNTH_WORKERS")
    if env is not None:
        try:
            return max(1, int(env))
        except ValueError:
            raise InputError(f"PACEGEO_SYNTH_WORKERS must be an integer, got {env!r}") from None
    if total_pixels < 4_000_000 or "fork" not in mp.get_all_start_methods() or sys.platform != "linux":
        return 1
    return max(1, len(os.sched_getaffinity(0)))


@dataclass
class _SceneProgress:
    """Book-keeping for one scene while its chunks are rendered: the dense mesh and which of its
    vertices the frames rendered so far have seen."""

    seed: int
    tmp: Path
    final: Path
    pending: int
    mesh: SceneMesh | None = None
    seen: np.ndarray | None = None
    thumbs: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def add_chunk(self, res: _ChunkResult, config: SynthConfig, num_frames: int, width: int, height: int) -> None:
        self.thumbs.update(res.thumbs)
        self.pending -= 1
        scene, poses = _cached_scene(self.seed, config, num_frames)
        if self.mesh is None:  # built here, while the workers render the next chunks
            self.mesh = scene_mesh(scene)
            self.seen = np.zeros(len(self.mesh.vertices), bool)
        if not config.mesh_observed_only:
            return
        Ks = scene_intrinsics(scene, width, height)
        Ks[:2] /= res.vis_stride  # depth[::s, ::s]: pixel j of the subsampled map is pixel s*j
        for i, d in res.vis_depth.items():
            self.seen |= mesh_visibility(self.mesh, d, Ks, poses[i])


def _prepare_scene_dir(tmp: Path, K: np.ndarray) -> None:
    if tmp.exists():
        shutil.rmtree(tmp)  # left over from an interrupted run
    for sub in ("color", "depth", "pose", "intrinsic"):
        (tmp / sub).mkdir(parents=True)
    for name in ("intrinsic_color.txt", "intrinsic_depth.txt"):
        _write_matrix(tmp / "intrinsic" / name, _intrinsic4(K))
    for name in ("extrinsic_color.txt", "extrinsic_depth.txt"):
        _write_matrix(tmp / "intrinsic" / name, np.eye(4))


def _finish_scene(sp: _SceneProgress, config: SynthConfig, num_frames: int, width: int, height: int) -> None:
    """Write the mesh and metadata of a fully rendered scene (moved into place with the others)."""
    scene, _ = _cached_scene(sp.seed, config, num_frames)
    mesh = sp.mesh.subset(sp.seen) if config.mesh_observed_only else sp.mesh
    write_mesh_ply(mesh, sp.tmp / f"{sp.final.name}_vh_clean_2.ply")
    meta = scene.summary() | {
        "format_version": FORMAT_VERSION, "num_frames": num_frames, "width": width, "height": height,
        "config": asdict(config), "mesh_vertices": int(len(mesh.vertices)),
        "pixel_centre": "pixel (u, v) has its centre at image coordinate (u, v)",
    }
    (sp.tmp / "synth_meta.json").write_text(json.dumps(meta, indent=1))


def generate_scenes(out_dir: str | os.PathLike, seeds: Sequence[int], num_frames: int, width: int = 640,
                    height: int = 480, *, config: SynthConfig | None = None, preview: bool = False,
                    overwrite: bool = False, progress: bool = True, workers: int | None = None) -> list[Path]:
    """Generate the scenes built from ``seeds`` (see :func:`generate_dataset` for the layout).

    ``workers`` worker processes render frames in parallel (default: one per available core for
    large jobs); the output does not depend on it.
    """
    if not seeds:
        raise InputError("no scenes to generate")
    check_count(num_frames, "frames", maximum=MAX_FRAMES)
    for value in (width, height):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not MIN_SIDE <= value <= MAX_SIDE:
            raise InputError(f"image size ({option('size')}) must be from {MIN_SIDE}x{MIN_SIDE} to {MAX_SIDE}x{MAX_SIDE} pixels, got {width}x{height}")
    for seed in seeds:
        check_seed(seed)
    if len(set(seeds)) != len(seeds):
        raise InputError("seeds must be distinct (each seed is one scene folder)")
    cfg = config or SynthConfig()
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path {out} exists and is not a folder")
    names = [scene_name(s) for s in seeds]
    specs = [OutputSpec(out / n, kind="folder", what="scene folder") for n in names]
    preview_spec = OutputSpec(out / "preview.png", suffixes=(".png",), what="preview") if preview else None
    created = []  # folders made here, removed again if the run fails
    try:
        for folder in reversed([out, *out.parents]):
            if not folder.exists():
                folder.mkdir()
                created.append(folder)
    except OSError as err:
        _remove_empty(created)
        raise OutputError(f"cannot create output folder {out}: {describe_os_error(err)}") from None
    try:
        with OutputSet(specs + ([preview_spec] if preview_spec else []), (), overwrite) as outputs:
            _render_scenes(outputs, specs, preview_spec, seeds, names, cfg, num_frames, width, height, preview,
                           progress, workers)
    except BrokenProcessPool:
        _remove_empty(created)
        raise OutputError("a rendering worker process died (out of memory?); nothing was written") from None
    except BaseException:
        _remove_empty(created)
        raise
    return [spec.path for spec in specs]


def _remove_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            break


def _render_scenes(outputs: OutputSet, specs: list[OutputSpec], preview_spec: OutputSpec | None, seeds: Sequence[int],
                   names: list[str], cfg: SynthConfig, num_frames: int, width: int, height: int, preview: bool,
                   progress: bool, workers: int | None) -> None:
    """Render every scene into its staged folder of ``outputs`` (and the preview)."""
    n_workers = workers if workers is not None else _num_workers(len(seeds) * num_frames * width * height)
    if "fork" not in mp.get_all_start_methods():
        n_workers = 1
    chunk = max(1, min(8, math.ceil(num_frames / max(n_workers, 1))))
    thumb_frames = tuple(int(i) for i in np.linspace(0, num_frames - 1, min(4, num_frames)).round())
    scenes: dict[int, _SceneProgress] = {}
    jobs = []
    for k, (seed, spec) in enumerate(zip(seeds, specs)):
        starts = range(0, num_frames, chunk)
        scenes[seed] = _SceneProgress(seed, outputs.staged(spec), spec.path, len(starts))
        for s0 in starts:
            idx = tuple(range(s0, min(num_frames, s0 + chunk)))
            want = tuple(i for i in idx if i in thumb_frames) if preview and k < 6 else ()
            jobs.append(_ChunkJob(seed, cfg, scenes[seed].tmp, num_frames, width, height, idx, want,
                                  vis_every=2 if num_frames > 32 else 1))
    prepared: set[int] = set()

    def prepare(job: _ChunkJob) -> None:  # just before a scene's first chunk is rendered
        if job.seed not in prepared:
            scene, _ = _cached_scene(job.seed, cfg, num_frames)  # forked workers inherit it
            _prepare_scene_dir(scenes[job.seed].tmp, scene_intrinsics(scene, width, height))
            prepared.add(job.seed)

    with tqdm(total=len(seeds) * num_frames, disable=not progress, unit="frame", desc="synth") as bar:
        def collect(res: _ChunkResult) -> None:
            sp = scenes[res.seed]
            sp.add_chunk(res, cfg, num_frames, width, height)
            bar.update(len(res.indices))
            if sp.pending == 0:
                _finish_scene(sp, cfg, num_frames, width, height)
                logger.info("rendered %s (%d frames)", sp.final, num_frames)
                sp.mesh = sp.seen = None

        if n_workers <= 1:
            for job in jobs:
                prepare(job)
                collect(_render_chunk(job))
        else:
            ctx = mp.get_context("fork")
            with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx, initializer=_init_worker) as pool:
                try:
                    for res in _ordered(pool, jobs, 2 * n_workers, prepare):
                        collect(res)
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    if preview_spec is not None:
        thumbs = [(sp.final.name, [sp.thumbs[i] for i in sorted(sp.thumbs)]) for sp in scenes.values() if sp.thumbs]
        write_preview(thumbs, outputs.staged(preview_spec))


def _ordered(pool: ProcessPoolExecutor, jobs: list[_ChunkJob], lookahead: int, before_submit):
    """Submit ``jobs`` keeping at most ``lookahead`` in flight; yield results in job order."""
    futures: list[Future] = []
    it = iter(jobs)

    def submit(job: _ChunkJob) -> None:
        before_submit(job)
        futures.append(pool.submit(_render_chunk, job))

    for job in it:
        submit(job)
        if len(futures) >= lookahead:
            break
    while futures:
        res = futures.pop(0).result()
        nxt = next(it, None)
        if nxt is not None:
            submit(nxt)
        yield res


def generate_dataset(out_dir: str | os.PathLike, num_scenes: int, num_frames: int, seed: int, width: int = 640,
                     height: int = 480, preview: bool = False, overwrite: bool = False,
                     progress: bool = True) -> list[Path]:
    """Generate SynthRooms scenes in the ScanNet raw layout.

    Scene ``i`` is built from seed ``seed + i`` and written to ``out_dir/scene_{seed+i:05d}/``::

        color/<i>.jpg                 colour, JPEG quality ~90
        depth/<i>.png                 uint16 millimetres, 0 = invalid (no hit, or beyond 65.535 m)
        pose/<i>.txt                  4x4 camera-to-world (OpenCV camera)
        intrinsic/intrinsic_color.txt, intrinsic_depth.txt   4x4, K top-left (the same K)
        intrinsic/extrinsic_color.txt, extrinsic_depth.txt   identity
        <scene>_vh_clean_2.ply        dense mesh with vertex colours (observed surfaces)
        synth_meta.json               seed, field of view, room size, generator settings

    Pixel ``(u, v)`` has its centre at image coordinate ``(u, v)``. The scenes are written under
    temporary names and moved into place together when all are complete
    (:class:`pacegeo.io.outputs.OutputSet`): a failed or interrupted run leaves no scene folder and
    no temporary folder, and existing scenes untouched. Existing scenes raise
    :class:`pacegeo.errors.OutputError` unless ``overwrite``. With
    ``preview``, ``out_dir/preview.png`` shows four frames (colour above depth) of up to six scenes.

    Args:
        out_dir: output folder (created if needed).
        num_scenes: number of scenes (seeds ``seed .. seed + num_scenes - 1``).
        num_frames: frames per scene.
        seed: seed of the first scene (non-negative).
        width, height: image size in pixels.
        preview: also write ``preview.png``.
        overwrite: replace existing scene folders.
        progress: show a tqdm progress bar over frames.

    Returns:
        The scene folders, in seed order.
    """
    num_scenes = check_count(num_scenes, "scenes", maximum=MAX_SCENES)
    seed = check_seed(seed, span=num_scenes)
    return generate_scenes(out_dir, [seed + i for i in range(num_scenes)], num_frames, width, height,
                           preview=preview, overwrite=overwrite, progress=progress)
