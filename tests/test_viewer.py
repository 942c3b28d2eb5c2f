"""pacegeo view: the scene put on a viser server, the command's errors, and what a browser shows."""

import contextlib
import functools
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pacegeo import cli, viewer

REPO_ROOT = Path(__file__).resolve().parents[1]
S, H, W = 3, 6, 8


def _rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _arrays(seed: int = 0) -> dict:
    """A small scene with the keys of Reconstruction.arrays(): random cameras, points and confidences,
    some padding (valid_mask False) and some non-finite points."""
    rng = np.random.default_rng(seed)
    extrinsics = np.stack([np.hstack([_rotation(rng), rng.normal(size=(3, 1))]) for _ in range(S)]).astype(np.float32)
    intrinsics = np.tile(np.array([[10.0, 0, W / 2], [0, 12.0, H / 2], [0, 0, 1]], np.float32), (S, 1, 1))
    valid = np.ones((S, H, W), bool)
    valid[:, :, -1] = False
    points = rng.normal(size=(S, H, W, 3)).astype(np.float32)
    points[0, 0, 0] = np.nan
    world = rng.normal(size=(S, H, W, 3)).astype(np.float32)
    return {
        "extrinsics": extrinsics,
        "intrinsics": intrinsics,
        "depth": rng.uniform(1, 3, size=(S, H, W)).astype(np.float32),
        "depth_conf": rng.uniform(1, 10, size=(S, H, W)).astype(np.float32),
        "world_points": world,
        "world_points_conf": rng.uniform(1, 10, size=(S, H, W)).astype(np.float32),
        "points_from_depth": points,
        "colors": rng.integers(0, 256, size=(S, H, W, 3), dtype=np.uint8),
        "valid_mask": valid,
        "frame_names": np.array([f"f{i}" for i in range(S)]),
        "keep": np.float32(0.3),
    }


def _expected_mask(arrays: dict, percentile: float, points_key="points_from_depth", conf_key="depth_conf", frames=None):
    """The points the viewer should show, computed here from the arrays alone."""
    points, conf = arrays[points_key], arrays[conf_key]
    usable = arrays["valid_mask"] & np.isfinite(points).all(-1) & np.isfinite(conf)
    mask = usable & (conf >= np.percentile(conf[usable], percentile))
    if frames is not None:
        mask &= np.isin(np.arange(S), frames)[:, None, None]
    return mask


@pytest.fixture
def scene_npz(tmp_path) -> Path:
    path = tmp_path / "scene.npz"
    np.savez(path, **_arrays())
    return path


@pytest.fixture
def server():
    viser = pytest.importorskip("viser")
    with contextlib.redirect_stdout(io.StringIO()):
        srv = viser.ViserServer(host="127.0.0.1", port=0, verbose=False)
    yield srv
    with contextlib.redirect_stdout(io.StringIO()):
        srv.stop()


def test_scene_points_and_frustums(server, scene_npz):
    import viser.transforms as tf

    arrays = dict(np.load(scene_npz))
    view = viewer.build_scene(server, viewer.load_npz(scene_npz), conf_percentile=50)
    mask = _expected_mask(arrays, 50)
    assert 0 < mask.sum() < arrays["valid_mask"].sum()
    np.testing.assert_array_equal(view.points.points, arrays["points_from_depth"][mask])
    np.testing.assert_array_equal(view.points.colors, arrays["colors"][mask])
    assert server.scene._handle_from_node_name["/points"] is view.points

    extrinsics = arrays["extrinsics"].astype(np.float64)
    centres = np.stack([-e[:, :3].T @ e[:, 3] for e in extrinsics])
    assert len(view.frustums) == S
    frustum_nodes = [n for n in server.scene._handle_from_node_name if n.startswith("/cameras/")]
    assert sorted(frustum_nodes) == [f"/cameras/{i:04d}" for i in range(S)]
    for i, frustum in enumerate(view.frustums):
        np.testing.assert_allclose(frustum.position, centres[i], atol=1e-6)
        np.testing.assert_allclose(tf.SO3(np.asarray(frustum.wxyz)).as_matrix(), extrinsics[i, :, :3].T, atol=1e-6)
        assert frustum.aspect == pytest.approx(W / H)
        assert frustum.fov == pytest.approx(2 * np.arctan(H / 2 / 12.0))


def test_controls_change_the_scene(server, scene_npz):
    arrays = dict(np.load(scene_npz))
    view = viewer.build_scene(server, viewer.load_npz(scene_npz))
    c = view.controls
    c["conf_percentile"].value = 80
    assert len(view.points.points) == _expected_mask(arrays, 80).sum()
    c["frames"].value = (1, 2)
    np.testing.assert_array_equal(view.points.points, arrays["points_from_depth"][_expected_mask(arrays, 80, frames=[1, 2])])
    assert [f.visible for f in view.frustums] == [False, True, True]
    c["frame_step"].value = 2  # frames 1..2, every 2nd: frame 1 only
    assert len(view.points.points) == _expected_mask(arrays, 80, frames=[1]).sum()
    assert [f.visible for f in view.frustums] == [False, True, False]
    assert all(f.image is not None for f in view.frustums)
    c["images"].value = False  # frustums rebuilt without their frames, still only frame 1 shown
    assert all(f.image is None for f in view.frustums) and [f.visible for f in view.frustums] == [False, True, False]
    c["cameras"].value = False
    assert not any(f.visible for f in view.frustums)
    c["source"].value = "pointmap"
    expected = _expected_mask(arrays, 80, "world_points", "world_points_conf", frames=[1])
    np.testing.assert_array_equal(view.points.points, arrays["world_points"][expected])
    c["max_points"].value = 5
    shown = view.points.points
    assert len(shown) == 5 and all(any((p == arrays["world_points"][expected]).all(1)) for p in shown)
    c["point_size"].value = c["point_size"].max
    assert view.points.point_size == pytest.approx(c["point_size"].max)


def test_keep_control_reruns_the_reconstruction(server, scene_npz):
    calls = []

    def reconstruct(keep: float) -> viewer.SceneArrays:
        calls.append(keep)
        arrays = _arrays(seed=1)
        return viewer.scene_from_arrays(arrays)

    view = viewer.build_scene(server, viewer.load_npz(scene_npz), reconstruct=reconstruct)
    view.controls["keep"].value = 0.5
    view.controls["rerun"].value = True  # a click
    assert calls == [0.5]
    other = _arrays(seed=1)
    np.testing.assert_array_equal(view.points.points, other["points_from_depth"][_expected_mask(other, 50)])
    assert len([n for n in server.scene._handle_from_node_name if n.startswith("/cameras/")]) == S


def test_npz_without_optional_keys(tmp_path):
    arrays = {k: v for k, v in _arrays().items() if k in ("extrinsics", "intrinsics", "colors", "world_points", "world_points_conf")}
    np.savez(tmp_path / "min.npz", **arrays)
    scene = viewer.load_npz(tmp_path / "min.npz")
    assert list(scene.points) == ["pointmap"] and scene.valid_mask.all() and scene.keep is None
    xyz, _ = scene.select_points(0, "pointmap")
    assert len(xyz) == S * H * W


# -- the command's errors ------------------------------------------------------------------------


@pytest.fixture
def no_serving(monkeypatch):
    """Any serve() the command reaches returns at once (a missing check then fails the test instead of hanging it)."""
    stop = threading.Event()
    stop.set()
    monkeypatch.setattr(viewer, "serve", functools.partial(viewer.serve, stop=stop))


def _run(argv, capsys) -> tuple[int, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, err


def _bad(tmp_path) -> dict:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    garbage = tmp_path / "garbage.npz"
    garbage.write_text("not a zip")
    single = tmp_path / "single.npz"
    with open(single, "wb") as handle:
        np.save(handle, np.zeros(3))
    nokeys = tmp_path / "nokeys.npz"
    np.savez(nokeys, depth=np.zeros((2, 3, 4)))
    shape = tmp_path / "shape.npz"
    arrays = _arrays()
    arrays["depth_conf"] = arrays["depth_conf"][:, :, :-1]
    np.savez(shape, **arrays)
    depth_only = tmp_path / "depth_only.npz"
    np.savez(depth_only, **{k: v for k, v in _arrays().items() if not k.startswith("world_points")})
    return {
        "no pointmap": ([str(depth_only), "--points-from", "pointmap"], "no points from 'pointmap'; it has depth"),
        "missing": ([str(tmp_path / "nothing.npz")], "not found"),
        "text": ([str(text)], "not an .npz scene"),
        "garbage": ([str(garbage)], "not an .npz archive"),
        "single array": ([str(single)], "not an .npz archive"),
        "no keys": ([str(nokeys)], "lacks arrays the viewer needs: extrinsics, intrinsics, colors"),
        "shapes": ([str(shape)], "depth_conf has shape [3, 6, 7], expected [3, 6, 8]"),
    }


def _assert_one_line_error(code: int, err: str, expected: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("pacegeo: error: ") and "Traceback" not in err, err
    assert expected in err, err


@pytest.mark.parametrize("case", ["missing", "text", "garbage", "single array", "no keys", "shapes", "no pointmap"])
def test_bad_input_is_one_line(case, tmp_path, capsys, no_serving):
    pytest.importorskip("viser")
    argv, expected = _bad(tmp_path)[case]
    _assert_one_line_error(*_run(["view", *argv, "--port", "0"], capsys), expected)


@pytest.mark.parametrize("flags, expected", [
    (["--keep", "0.5"], "--keep only applies to a folder of images or a video"),
    (["--model", "x", "--frames", "2"], "--model, --frames only apply to a folder of images or a video"),
    (["--conf-percentile", "100"], "--conf-percentile must be in [0, 100)"),
    (["--max-points", "0"], "--max-points"),
    (["--port", "70000"], "port must be in [0, 65535]"),
    (["--points-from", "pointmap", "--host", "no-such-host.invalid"], "cannot listen on host"),
])
def test_bad_options_are_one_line(flags, expected, scene_npz, capsys, no_serving):
    pytest.importorskip("viser")
    _assert_one_line_error(*_run(["view", str(scene_npz), *flags], capsys), expected)


def test_port_in_use(scene_npz, capsys, no_serving):
    pytest.importorskip("viser")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _assert_one_line_error(*_run(["view", str(scene_npz), "--port", str(port)], capsys), f"cannot listen on 127.0.0.1:{port}")
        with pytest.raises(viewer.InputError, match="cannot listen"):
            viewer.serve(viewer.load_npz(scene_npz), port=port)


def test_viser_missing(scene_npz, capsys, monkeypatch, no_serving):
    monkeypatch.setitem(sys.modules, "viser", None)  # import viser raises ImportError
    _assert_one_line_error(*_run(["view", str(scene_npz)], capsys), "pip install 'pacegeo[viewer]' (or pip install viser)")


def test_import_needs_no_viser():
    code = "import sys; sys.modules['viser'] = None; import pacegeo.viewer, pacegeo.cli; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


# -- the served viewer ---------------------------------------------------------------------------


def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _served(npz: Path, sigint_ignored: bool = False):
    """``pacegeo view NPZ --port 0`` in a subprocess; yields (process, url); Ctrl-C at the end.
    ``sigint_ignored`` starts it as a shell's background job is started (SIGINT ignored)."""
    pytest.importorskip("viser")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "pacegeo", "view", str(npz), "--port", "0"], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_ignore_sigint if sigint_ignored else None)
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        yield proc, match.group(0)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("sig, sigint_ignored", [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["ctrl-c", "sigterm", "ctrl-c-in-background-job"])
def test_ctrl_c_stops_cleanly(scene_npz, sig, sigint_ignored):
    with _served(scene_npz, sigint_ignored) as (proc, url):
        import urllib.request

        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200 and b"<html" in response.read(2000).lower()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert out.strip() == "viewer stopped" and err == ""


def _wall_scene() -> dict:
    """Two cameras side by side looking at a magenta wall two units ahead. The lower half of each
    frame is padding (no points) coloured green in frame 0 and yellow in frame 1: those colours can
    only come from the frames drawn in the frustums."""
    h, w = 160, 200
    ys, xs = np.meshgrid(np.linspace(-0.8, 0.8, h), np.linspace(-1.1, 1.1, w), indexing="ij")
    wall = np.stack([xs, ys, np.full_like(xs, 2.0)], -1).astype(np.float32)
    colors = np.tile(np.array([255, 0, 255], np.uint8), (2, h, w, 1))
    colors[0, h // 2:], colors[1, h // 2:] = (0, 255, 0), (255, 255, 0)
    valid = np.ones((2, h, w), bool)
    valid[:, h // 2:] = False
    return {
        "extrinsics": np.stack([np.hstack([np.eye(3), [[dx], [0], [0]]]) for dx in (0.0, -0.3)]).astype(np.float32),
        "intrinsics": np.tile(np.array([[60.0, 0, w / 2], [0, 60.0, h / 2], [0, 0, 1]], np.float32), (2, 1, 1)),
        "points_from_depth": np.stack([wall, wall]), "depth_conf": np.ones((2, h, w), np.float32),
        "colors": colors, "valid_mask": valid, "frame_names": np.array(["a", "b"]), "keep": np.float32(0.3),
    }


def _screenshots(browser: str, url: str, profile: Path, timeout: float = 60.0):
    """Screenshots ``[768, 1024, 3]`` of ``url`` in headless Chromium, about one a second, until the
    caller stops or ``timeout`` seconds have passed (driven over the DevTools protocol: a page that
    keeps a websocket open never idles, which can hang ``--screenshot``)."""
    import base64
    import json
    import urllib.request

    from PIL import Image
    from websockets.sync.client import connect

    deadline = time.monotonic() + timeout
    proc = subprocess.Popen([browser, "--headless=new", "--no-sandbox", f"--user-data-dir={profile}",
                             "--remote-debugging-port=0", "--hide-scrollbars", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert time.monotonic() < deadline and proc.poll() is None, "chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=10) as response:
            page = next(t for t in json.load(response) if t["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10) as ws:
            ids = iter(range(1, 1_000_000))

            def call(method: str, **params):
                key = next(ids)
                ws.send(json.dumps({"id": key, "method": method, "params": params}))
                while True:
                    message = json.loads(ws.recv(timeout=max(1.0, deadline - time.monotonic())))
                    if message.get("id") == key:
                        return message.get("result", {})

            call("Emulation.setDeviceMetricsOverride", width=1024, height=768, deviceScaleFactor=1, mobile=False)
            call("Page.navigate", url=url)
            while time.monotonic() < deadline:
                time.sleep(1.0)
                png = base64.b64decode(call("Page.captureScreenshot", format="png")["data"])
                yield np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int), png
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _missing_from(pixels: np.ndarray) -> str | None:
    """What the screenshot of the wall scene lacks, or None."""
    if pixels.std() < 10:
        return "a blank page"
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    magenta = (r > 180) & (g < 120) & (b > 180)
    if magenta.mean() < 0.04:  # the frames in the frustums make about 1%
        return f"the points: {magenta.mean():.2%} of the page is magenta"
    scene_part = np.zeros(magenta.shape, bool)
    scene_part[:, 100:650] = True  # not the control panel (top right) nor the axes (bottom left)
    green = scene_part & (g > 180) & (r < 120) & (b < 120)
    yellow = scene_part & (r > 180) & (g > 180) & (b < 120)
    if green.sum() < 300 or yellow.sum() < 300:
        return f"the frames in the frustums: {green.sum()} green and {yellow.sum()} yellow pixels"
    if np.nonzero(green)[1].mean() > np.nonzero(yellow)[1].mean():
        return "frame 0's frustum left of frame 1's (x right)"
    return None


def test_browser_shows_the_points(tmp_path):
    """Headless Chromium renders the viewer: the magenta wall covers a good part of the page, and
    both frustums show their frames (green, yellow), frame 0's left of frame 1's."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium to take a screenshot (apt-get install chromium)")
    npz = tmp_path / "wall.npz"
    np.savez(npz, **_wall_scene())
    missing = "a screenshot"
    with _served(npz) as (proc, url):
        for pixels, png in _screenshots(browser, url, tmp_path / "profile"):
            (tmp_path / "shot.png").write_bytes(png)
            missing = _missing_from(pixels)
            if missing is None:
                break
    assert missing is None, f"the page lacks {missing} (see {tmp_path / 'shot.png'})"


def test_default_filter_is_the_library_default():
    from pacegeo.pipeline import DEFAULT_CONF_PERCENTILE

    assert viewer.DEFAULT_CONF_PERCENTILE == DEFAULT_CONF_PERCENTILE
