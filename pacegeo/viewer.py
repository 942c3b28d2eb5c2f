"""Interactive 3D viewer of a reconstruction in the browser: coloured points and camera frustums.

Built on viser (an optional dependency: ``pip install "pacegeo[viewer]"``), imported only by the
functions that need it, so ``import pacegeo.viewer`` works without it.

Coordinates: the scene stays in pacegeo's world frame, the OpenCV convention (x right, y down,
z forward; frame 0's camera is the world). Nothing is converted: the viewer is told that ``-y`` is
up (``server.scene.set_up_direction("-y")``), so positions in the viser scene are the world
coordinates of the reconstruction. viser's camera frustums use the OpenCV camera convention
(+z forward, +y down), so camera-to-world rotations go in unchanged.

Typical use::

    scene = load_npz("scene.npz")                 # written by pacegeo reconstruct --export npz
    serve(scene, port=8080)                       # blocks until Ctrl-C
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import signal
import socket
import threading
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from pacegeo.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_CONF_PERCENTILE = 50.0  # as the command line's point filter: drop the least confident half
DEFAULT_MAX_POINTS = 1_000_000
SOURCES = {"depth": ("points_from_depth", "depth_conf"), "pointmap": ("world_points", "world_points_conf")}
_FIRST_COLOR, _LAST_COLOR = np.array([230.0, 80.0, 30.0]), np.array([40.0, 110.0, 230.0])


def import_viser():
    """The ``viser`` module; :class:`InputError` naming the install command when it is missing."""
    from pacegeo.extras import require

    return require("viser", "the viewer")


@dataclass
class SceneArrays:
    """What the viewer shows: ``S`` frames with dense ``h x w`` maps.

    Attributes:
        extrinsics: ``[S, 3, 4]`` float64 OpenCV world-to-camera.
        intrinsics: ``[S, 3, 3]`` float64 at the maps' resolution ``(h, w)``.
        colors: ``[S, h, w, 3]`` uint8 RGB.
        points: per source (``"depth"``: unprojected depth, ``"pointmap"``: the point head; one or
            both) ``[S, h, w, 3]`` float32 world points.
        conf: per source ``[S, h, w]`` float32 confidence (higher is better).
        valid_mask: ``[S, h, w]`` bool, False on padding.
        frame_names: ``S`` names.
        keep: fraction of tokens kept by the reconstruction, when known.
        name: what the scene was read from (shown in the viewer).
    """

    extrinsics: np.ndarray
    intrinsics: np.ndarray
    colors: np.ndarray
    points: dict
    conf: dict
    valid_mask: np.ndarray
    frame_names: list = field(default_factory=list)
    keep: float | None = None
    name: str = "scene"

    def __len__(self) -> int:
        return int(self.extrinsics.shape[0])

    @property
    def camera_centers(self) -> np.ndarray:
        """``[S, 3]`` camera centres in world coordinates (``-R^T t``)."""
        rotation, t = self.extrinsics[:, :, :3], self.extrinsics[:, :, 3]
        return -np.einsum("sji,sj->si", rotation, t)

    def point_mask(self, conf_percentile: float = DEFAULT_CONF_PERCENTILE, source: str = "depth") -> np.ndarray:
        """``[S, h, w]`` bool: valid, finite pixels not among the least confident ``conf_percentile``
        percent (the percentile is taken over the valid, finite pixels of all frames, as
        :meth:`pacegeo.Reconstruction.point_mask` does)."""
        if source not in self.points:
            raise InputError(f"the scene has no points from {source!r}; it has {', '.join(self.points)}")
        p = float(conf_percentile)
        if not math.isfinite(p) or not 0.0 <= p < 100.0:
            raise InputError(f"confidence percentile must be in [0, 100), got {conf_percentile!r}")
        points, conf = self.points[source], self.conf[source]
        mask = self.valid_mask & np.isfinite(points).all(axis=-1) & np.isfinite(conf)
        if mask.any() and p > 0:
            mask &= conf >= np.percentile(conf[mask], p)
        return mask

    def select_points(
        self,
        conf_percentile: float = DEFAULT_CONF_PERCENTILE,
        source: str = "depth",
        frames: list[int] | None = None,
        max_points: int | None = DEFAULT_MAX_POINTS,
        seed: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Points shown: those passing :meth:`point_mask` in the ``frames`` given (default all),
        at most ``max_points`` of them (a seeded random subset, in order).

        Returns ``(xyz [M, 3] float32, rgb [M, 3] uint8)``.
        """
        mask = self.point_mask(conf_percentile, source)
        if frames is not None:
            chosen = np.zeros(len(self), dtype=bool)
            chosen[np.asarray(frames, dtype=np.int64)] = True
            mask &= chosen[:, None, None]
        xyz, rgb = self.points[source][mask].astype(np.float32), self.colors[mask]
        if max_points is not None and len(xyz) > max_points:
            keep = np.sort(np.random.default_rng(seed).choice(len(xyz), size=int(max_points), replace=False))
            xyz, rgb = xyz[keep], rgb[keep]
        return xyz, rgb


def _array(arrays, key: str, dtype, shape: tuple, name: str) -> np.ndarray:
    """``arrays[key]`` as ``dtype``; :class:`InputError` unless its shape is ``shape`` (None: any)."""
    value = np.asarray(arrays[key], dtype=dtype)
    if value.ndim != len(shape) or any(e is not None and e != a for e, a in zip(shape, value.shape)):
        expected = ", ".join("?" if e is None else str(e) for e in shape)
        raise InputError(f"{name}: array {key} has shape {list(value.shape)}, expected [{expected}]")
    return value


def scene_from_arrays(arrays, name: str = "scene") -> SceneArrays:
    """A :class:`SceneArrays` from :meth:`pacegeo.Reconstruction.arrays` or an npz holding its keys
    (``extrinsics``, ``intrinsics``, ``colors`` and ``points_from_depth``/``depth_conf`` and/or
    ``world_points``/``world_points_conf``; ``valid_mask``, ``frame_names``, ``keep`` optional).

    Raises :class:`InputError` for missing arrays or inconsistent shapes.
    """
    keys = set(arrays.keys())
    sources = [s for s, (p, c) in SOURCES.items() if p in keys and c in keys]
    missing = [k for k in ("extrinsics", "intrinsics", "colors") if k not in keys]
    if not sources:
        missing.append("points_from_depth and depth_conf (or world_points and world_points_conf)")
    if missing:
        raise InputError(f"{name} lacks arrays the viewer needs: {', '.join(missing)} "
                         "(write a scene with pacegeo reconstruct ... --export npz)")
    try:
        extrinsics = _array(arrays, "extrinsics", np.float64, (None, 3, 4), name)
        s = extrinsics.shape[0]
        intrinsics = _array(arrays, "intrinsics", np.float64, (s, 3, 3), name)
        colors = _array(arrays, "colors", None, (s, None, None, 3), name)
        hw = colors.shape[1:3]
        points = {src: _array(arrays, SOURCES[src][0], np.float32, (s, *hw, 3), name) for src in sources}
        conf = {src: _array(arrays, SOURCES[src][1], np.float32, (s, *hw), name) for src in sources}
        valid = _array(arrays, "valid_mask", bool, (s, *hw), name) if "valid_mask" in keys else np.ones((s, *hw), bool)
        names = [str(n) for n in np.asarray(arrays["frame_names"]).reshape(-1)] if "frame_names" in keys else []
        keep = round(float(np.asarray(arrays["keep"])), 6) if "keep" in keys else None  # stored as float32
    except InputError:
        raise
    except (ValueError, TypeError, KeyError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise InputError(f"cannot read the arrays of {name}: {err}") from None
    if colors.dtype != np.uint8:  # floats in [0, 1], or other integer types
        scale = 255.0 if colors.dtype.kind == "f" and np.nanmax(colors, initial=0) <= 1.0 else 1.0
        colors = np.clip(np.nan_to_num(colors.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    names = names if len(names) == s else [f"frame {i}" for i in range(s)]
    return SceneArrays(extrinsics, intrinsics, colors, points, conf, valid, names, keep, name)


def load_npz(path) -> SceneArrays:
    """Read a scene written by ``pacegeo reconstruct --export npz`` (or ``Reconstruction.save_npz``).

    Raises :class:`InputError` for a missing file, a file that is not an npz archive, or an archive
    without the arrays the viewer needs.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"scene file not found: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an .npz scene file")
    try:
        with open(path, "rb") as handle:
            is_zip = zipfile.is_zipfile(handle)
        data = np.load(path, allow_pickle=False) if is_zip else None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise InputError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise InputError(f"{path} is not an .npz archive (write a scene with pacegeo reconstruct ... --export npz)")
    with data:
        return scene_from_arrays(data, name=path.name)


def scene_from_reconstruction(rec, name: str = "reconstruction") -> SceneArrays:
    """A :class:`SceneArrays` from a :class:`pacegeo.Reconstruction` (``name`` is shown in the viewer)."""
    return scene_from_arrays(rec.arrays(), name=name)


def _extent(scene: SceneArrays) -> tuple[float, np.ndarray]:
    """Robust scene size (diagonal of the 2nd-98th percentile box of points and cameras) and centre."""
    xyz, _ = scene.select_points(DEFAULT_CONF_PERCENTILE, next(iter(scene.points)), max_points=100_000)
    xyz = np.concatenate([xyz.astype(np.float64), scene.camera_centers[np.isfinite(scene.camera_centers).all(1)]])
    if len(xyz) == 0:
        return 1.0, np.zeros(3)
    low, high = np.percentile(xyz, [2, 98], axis=0)
    size = float(np.linalg.norm(high - low))
    return (size if math.isfinite(size) and size > 0 else 1.0), np.median(xyz, axis=0)


class SceneViewer:
    """A scene on a ``viser.ViserServer`` with GUI controls; see :func:`build_scene`.

    Attributes:
        points: the point cloud handle (``/points``).
        frustums: one camera frustum handle per frame (``/cameras/NNNN``), positioned at the camera
            centres with camera-to-world rotations.
        controls: the GUI handles by name.
    """

    def __init__(self, server, scene: SceneArrays, reconstruct: Callable[[float], SceneArrays] | None = None,
                 conf_percentile: float = DEFAULT_CONF_PERCENTILE, max_points: int = DEFAULT_MAX_POINTS,
                 source: str = "depth", seed: int = 0) -> None:
        import viser.transforms as tf

        self._tf = tf
        self.server, self.scene, self.reconstruct, self.seed = server, scene, reconstruct, seed
        self._lock = threading.RLock()
        self.points, self.frustums = None, []
        scene.point_mask(conf_percentile, source)  # validate the options before building anything
        server.scene.set_up_direction("-y")
        self.size, centre = _extent(scene)
        gui, s = server.gui, len(scene)
        c = {}
        c["info"] = gui.add_markdown("")
        c["conf_percentile"] = gui.add_slider("Confidence percentile", 0, 99, 1, min(99, int(round(conf_percentile))),
                                              hint="drop the least confident P percent of the points")
        c["max_points"] = gui.add_number("Max points", int(max_points), min=1, step=1000)
        c["source"] = gui.add_dropdown("Points from", tuple(scene.points), initial_value=source)
        unit = float(f"{self.size / 5000:.1g}")  # point sizes in round steps of the scene's size
        c["point_size"] = gui.add_slider("Point size", unit, 150 * unit, unit, 15 * unit)
        c["frames"] = gui.add_multi_slider("Frames", 0, max(s - 1, 1), 1, (0, s - 1), disabled=s < 2)
        c["frame_step"] = gui.add_number("Every k-th frame", 1, min=1, max=max(s, 1), step=1)
        c["cameras"] = gui.add_checkbox("Show cameras", True)
        c["images"] = gui.add_checkbox("Images in frustums", True)
        if reconstruct is not None:
            c["keep"] = gui.add_slider("Keep", 0.05, 1.0, 0.05, float(scene.keep if scene.keep else 0.3),
                                       hint="fraction of patch tokens each frame keeps")
            c["rerun"] = gui.add_button("Reconstruct at this keep")
            c["rerun"].on_click(lambda _: self._rerun())
        self.controls = c
        for name in ("conf_percentile", "max_points", "source", "frames", "frame_step"):
            c[name].on_update(lambda _: self.refresh_points())
        for name in ("frames", "frame_step", "cameras", "images"):
            c[name].on_update(lambda event: self.refresh_cameras(rebuild=event.target is c["images"]))
        c["point_size"].on_update(lambda _: self._set_point_size())
        self.refresh_points()
        self.refresh_cameras(rebuild=True)
        first = np.linalg.inv(np.vstack([scene.extrinsics[0], [0, 0, 0, 1]]))  # camera-to-world of frame 0
        if np.isfinite(first).all():
            back = first[:3, :3] @ np.array([0.0, -0.4, -1.0])  # behind frame 0's camera and above it
            server.initial_camera.position = first[:3, 3] + 0.45 * self.size * back / np.linalg.norm(back)
            server.initial_camera.look_at = centre

    def selected_frames(self) -> list[int]:
        """Frames in the GUI's range, every k-th."""
        first, last = (int(v) for v in self.controls["frames"].value)
        step = max(1, int(self.controls["frame_step"].value))
        return list(range(max(0, first), min(len(self.scene) - 1, last) + 1, step))

    def refresh_points(self) -> None:
        """(Re)build ``/points`` from the GUI's filter."""
        with self._lock:
            c = self.controls
            max_points = max(1, int(c["max_points"].value))
            xyz, rgb = self.scene.select_points(float(c["conf_percentile"].value), str(c["source"].value),
                                                self.selected_frames(), max_points, self.seed)
            self.points = self.server.scene.add_point_cloud(
                "/points", xyz, rgb, point_size=float(c["point_size"].value), point_shape="rounded",
                precision="float32",
            )
            total = int(self.scene.valid_mask.sum())
            keep = f", keep {self.scene.keep:g}" if self.scene.keep is not None else ""
            h, w = self.scene.colors.shape[1:3]
            c["info"].content = (f"**{self.scene.name}**: {len(self.scene)} frames, {w}x{h} maps{keep}  \n"
                                 f"{len(xyz):,} of {total:,} points shown")
            log.debug("showing %d points", len(xyz))

    def _set_point_size(self) -> None:
        if self.points is not None:
            self.points.point_size = float(self.controls["point_size"].value)

    def refresh_cameras(self, rebuild: bool = False) -> None:
        """Show the frustums of the selected frames (``rebuild``: create them anew)."""
        with self._lock:
            if rebuild or len(self.frustums) != len(self.scene):
                for handle in self.frustums:
                    handle.remove()
                self.frustums = [self._add_frustum(i) for i in range(len(self.scene))]
            shown = set(self.selected_frames()) if self.controls["cameras"].value else set()
            for i, handle in enumerate(self.frustums):
                handle.visible = i in shown

    def _add_frustum(self, i: int):
        scene = self.scene
        h, w = scene.colors.shape[1:3]
        rotation = scene.extrinsics[i, :, :3].T  # camera-to-world
        fy = scene.intrinsics[i, 1, 1]
        fov = 2.0 * math.atan(h / (2.0 * fy)) if math.isfinite(fy) and fy > 0 else math.radians(60)
        centre = scene.camera_centers[i]
        if not (np.isfinite(rotation).all() and np.isfinite(centre).all()):
            rotation, centre = np.eye(3), np.zeros(3)
        step = max(1, w // 256)
        image = scene.colors[i, ::step, ::step] if self.controls["images"].value else None
        t = i / max(1, len(scene) - 1)
        color = tuple(int(v) for v in (1 - t) * _FIRST_COLOR + t * _LAST_COLOR)
        frustum = self.server.scene.add_camera_frustum(
            f"/cameras/{i:04d}", fov=fov, aspect=w / h, scale=0.03 * self.size, thickness=1.5,
            thickness_units="screen", color=color, image=image, format="jpeg",
            wxyz=self._tf.SO3.from_matrix(rotation).wxyz, position=centre,
        )

        @frustum.on_click
        def _(_event) -> None:  # look through this camera
            for client in self.server.get_clients().values():
                client.camera.wxyz, client.camera.position = frustum.wxyz, frustum.position

        return frustum

    def set_scene(self, scene: SceneArrays) -> None:
        """Show another reconstruction of the same frames (e.g. at another keep)."""
        with self._lock:
            if len(scene) != len(self.scene):
                raise InputError(f"the new scene has {len(scene)} frames, the viewer shows {len(self.scene)}")
            self.scene = scene
            self.refresh_points()
            self.refresh_cameras(rebuild=True)

    def _rerun(self) -> None:
        c = self.controls
        keep = float(c["keep"].value)
        c["rerun"].disabled = True
        c["info"].content = f"reconstructing at keep {keep:g} ..."
        try:
            self.set_scene(self.reconstruct(keep))
        except Exception as err:  # shown in the viewer; the server keeps running
            log.warning("reconstruction at keep %g failed: %s", keep, err)
            c["info"].content = f"reconstruction at keep {keep:g} failed: {err}"
        finally:
            c["rerun"].disabled = False


def build_scene(server, scene: SceneArrays, **kwargs) -> SceneViewer:
    """Put ``scene`` (points, one frustum per camera) and its GUI controls on ``server`` (a
    ``viser.ViserServer``). ``kwargs``: ``reconstruct`` (a function ``keep -> SceneArrays`` that
    enables a keep slider), ``conf_percentile``, ``max_points``, ``source`` (``"depth"`` or
    ``"pointmap"``), ``seed``; see :class:`SceneViewer`."""
    return SceneViewer(server, scene, **kwargs)


def check_port(host: str, port: int) -> None:
    """:class:`InputError` unless a server can listen on ``host:port`` (``port`` 0: any free port)."""
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise InputError(f"port must be in [0, 65535], got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as err:
        raise InputError(f"cannot listen on host {host!r}: {getattr(err, 'strerror', None) or err}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
            try:
                probe.bind(address)
            except OSError as err:
                raise InputError(f"cannot listen on {host}:{port}: {err.strerror or err} "
                                 "(is another program using the port? choose another one)") from None


def serve(scene: SceneArrays, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          ready: Callable[[str], None] | None = None, stop: threading.Event | None = None, **kwargs) -> None:
    """Serve ``scene`` at ``http://host:port`` until Ctrl-C or SIGTERM (or until ``stop`` is set),
    then return.

    ``ready(url)`` is called once the viewer is up; ``kwargs`` go to :func:`build_scene`.
    Raises :class:`InputError` when viser is missing or the port is taken.
    """
    stop = stop or threading.Event()
    with _stop_on_signals(stop):
        _serve(scene, host, port, ready, stop, **kwargs)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event):
    """SIGINT and SIGTERM set ``stop`` while the viewer serves (previous handlers restored after).

    Explicit handlers, because a process started with SIGINT ignored (a shell's background job,
    ``nohup``) never turns Ctrl-C or ``kill -INT`` into ``KeyboardInterrupt``. Signal handlers can
    only be set from the main thread; elsewhere ``stop`` is the only way out.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in handled}
    for sig in handled:
        signal.signal(sig, lambda *_: stop.set())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _serve(scene: SceneArrays, host: str, port: int, ready: Callable[[str], None] | None,
           stop: threading.Event, **kwargs) -> None:
    viser = import_viser()
    check_port(host, port)
    with _quiet_stdout():  # viser prints a banner; the address goes to ready() and the log instead
        server = viser.ViserServer(host=host, port=port, verbose=False)
    try:
        if port and server.get_port() != port:  # taken between the check and the start
            raise InputError(f"cannot listen on {host}:{port}: the port is in use; choose another one")
        build_scene(server, scene, **kwargs)
        url = f"http://{host if ':' not in host else f'[{host}]'}:{server.get_port()}"
        log.info("viewer at %s", url)
        if ready is not None:
            ready(url)
        while not stop.wait(0.25):
            pass
        log.info("viewer stopped")
    finally:
        _stop_server(server)


def _stop_server(server, timeout: float = 5.0) -> None:
    """``server.stop()``, waited for at most ``timeout`` seconds: it joins viser's threads and has
    been seen to block under load, and a stopped viewer must not keep its command from ending.
    The server's threads are daemons; what is left of them ends with the process."""
    stopper = threading.Thread(target=server.stop, daemon=True)
    with _quiet_stdout():
        stopper.start()
        stopper.join(timeout)
    if stopper.is_alive():
        log.debug("the viewer's server was still stopping after %.0f s; not waiting for it", timeout)


@contextlib.contextmanager
def _quiet_stdout():
    """Capture what is printed to stdout meanwhile (viser's messages) into the debug log."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    if buffer.getvalue().strip():
        log.debug("viser: %s", buffer.getvalue().strip())
