"""Packaging: a regular (non-editable) install carries the bundled model, and the optional
extras are optional (a missing one is one line naming its install)."""

import os
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".git", "build", "dist", "runs", "out", "*.egg-info", "__pycache__", ".pytest_cache")


def test_a_wheel_installed_in_a_fresh_environment_reconstructs_the_example_from_elsewhere(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT, source, ignore=SKIP)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "dist").glob("pacegeo-*.whl"))

    env_dir = tmp_path / "env"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)  # torch etc. from the system
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", site, str(wheel)],
        capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(REPO_ROOT / "examples" / "synthrooms-16", elsewhere / "frames")
    script = textwrap.dedent(
        """
        import sys
        import pacegeo, pacegeo.hub
        from pacegeo.cli import main
        print(pacegeo.__file__)
        print(pacegeo.hub.checkpoints_dir())
        sys.exit(main(["reconstruct", "frames", "--frames", "4", "-o", "scene.ply", "-q"]))
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PACEGEO_CHECKPOINTS")}
    run = subprocess.run([str(python), "-c", script], cwd=elsewhere, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    package_file, checkpoints = run.stdout.split()[:2]
    assert Path(package_file).is_relative_to(env_dir) and Path(checkpoints).is_relative_to(env_dir), run.stdout
    assert (Path(checkpoints) / "pacegeo-tiny.safetensors").is_file()
    assert (elsewhere / "scene.ply").stat().st_size > 1000


@pytest.mark.parametrize(
    "missing, argv, fragment",
    [
        ("open3d", ["synth", "-o", "{tmp}/synth", "-q"], "pip install 'pacegeo[synth]'"),
        ("faiss", ["localize", "{map}", "{frames}/000.jpg"], "pip install 'pacegeo[vpr]'"),
        ("av", ["reconstruct", "{tmp}/clip.mp4", "-o", "{tmp}/s.ply"], "pip install 'pacegeo[video]'"),
    ],
)
def test_a_missing_extra_is_one_line_naming_its_install(missing, argv, fragment, tmp_path, tmp_path_factory):
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 64)
    frames = REPO_ROOT / "examples" / "synthrooms-16"
    map_file = tmp_path_factory.mktemp("map") / "m.pgmap"
    if "{map}" in argv:  # a map built without faiss: descriptors need no index
        build = subprocess.run([sys.executable, "-c", "import sys; sys.modules['faiss'] = None\nfrom pacegeo.cli import main\n"
                                f"sys.exit(main(['map', {str(frames)!r}, '--frames', '4', '-o', {str(map_file)!r}, '-q']))"],
                               capture_output=True, text=True)
        assert build.returncode == 0 and "warning" not in build.stderr, build.stderr
    argv = [a.format(tmp=tmp_path, frames=frames, map=map_file) for a in argv]
    script = f"import sys; sys.modules[{missing!r}] = None\nfrom pacegeo.cli import main\nsys.exit(main({argv!r}))"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and fragment in lines[0], run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_reconstruction_needs_none_of_the_extras(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        for name in ("open3d", "faiss", "av", "viser"):
            sys.modules[name] = None
        from pacegeo.cli import main
        sys.exit(main(["reconstruct", {str(REPO_ROOT / "examples" / "synthrooms-16")!r}, "--frames", "3",
                       "-o", "scene.ply", "--export", "glb,colmap,npz,cameras", "--preview", "p.png", "-q"]))
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png", "scene.glb", "scene.npz", "scene.ply", "scene_cameras.json", "scene_colmap"]
