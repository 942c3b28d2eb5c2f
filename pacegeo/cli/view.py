"""``pacegeo view``: an interactive 3D viewer of a reconstruction."""

from __future__ import annotations

import argparse
import os
import sys

from pacegeo.cli.common import (
    DEVICE_HELP,
    MODEL_HELP,
    PRUNER_HELP,
    WarningHandler,
    add_frame_selection,
    one_line_errors,
)


def _cmd_view(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pacegeo.errors import InputError

    with WarningHandler():
        # 1. viser, the options and the port, before anything is read.
        from pacegeo import viewer
        from pacegeo.options import check_count, check_seed

        viewer.import_viser()
        if not 0 <= args.conf_percentile < 100:
            raise InputError(f"--conf-percentile must be in [0, 100), got {args.conf_percentile:g}")
        check_count(args.max_points, "max_points")
        check_seed(args.seed)
        viewer.check_port(args.host, args.port)

        # 2. The scene: an npz as it is, or a folder of images / a video reconstructed here.
        path = Path(args.input).expanduser()
        if not path.exists():
            raise InputError(f"input not found: {path}")
        reconstruct = None
        if path.is_file() and path.suffix.lower() == ".npz":
            given = [flag for flag, name in _VIEW_RECONSTRUCT_OPTIONS if getattr(args, name) is not None]
            if given:
                verb = "applies" if len(given) == 1 else "apply"
                raise InputError(f"{', '.join(given)} only {verb} to a folder of images or a video; "
                                 f"{path.name} holds a finished reconstruction")
            scene = viewer.load_npz(path)
        else:
            from pacegeo.io.images import IMAGE_EXTENSIONS
            from pacegeo.io.video import is_video_file

            if path.is_file() and not (is_video_file(path) or path.suffix.lower() in IMAGE_EXTENSIONS):
                raise InputError(f"{path} is not an .npz scene (pacegeo reconstruct ... --export npz), "
                                 "a folder of images or a video")
            scene, reconstruct = _view_reconstruction(args, path)

        # 3. The viewer, until Ctrl-C.
        def ready(url: str) -> None:
            print(f"viewer at {url} (Ctrl-C to stop)", flush=True)

        source = args.points_from or ("depth" if "depth" in scene.points else next(iter(scene.points)))
        viewer.serve(
            scene, args.host, args.port, ready=ready, reconstruct=reconstruct, conf_percentile=args.conf_percentile,
            max_points=args.max_points or viewer.DEFAULT_MAX_POINTS, source=source, seed=args.seed,
        )
    print("viewer stopped", flush=True)
    # The web server's worker threads can outlive its stop() (a request still in flight), and the
    # interpreter would wait for them at exit: the command is done, so the process ends here.
    sys.stderr.flush()
    os._exit(0)


_VIEW_RECONSTRUCT_OPTIONS = (
    ("--keep", "keep"), ("--model", "model"), ("--pruner", "pruner"), ("--device", "device"),
    ("--frames", "frames"), ("--stride", "stride"), ("--fps", "fps"),
)


def _view_reconstruction(args: argparse.Namespace, path):
    """Reconstruct ``path`` for ``pacegeo view``: the scene, and a function re-running it at another keep."""
    from pacegeo import viewer
    from pacegeo.errors import InputError
    from pacegeo.options import check_count, check_keep, check_positive_number
    from pacegeo.pipeline import DEFAULT_KEEP, Pipeline, check_input, resolve_model

    pruner = args.pruner or "auto"
    keep = check_keep(args.keep if args.keep is not None else (1.0 if pruner.lower() == "none" else DEFAULT_KEEP))
    if pruner.lower() == "none" and keep < 1.0:
        raise InputError(f"--keep {keep:g} needs a pruner; drop --pruner none or use --keep 1")
    for name in ("frames", "stride"):
        check_count(getattr(args, name), name)
    check_positive_number(args.fps, "fps")
    description = check_input(path, args.fps)
    choice = resolve_model(args.model or "auto")
    progress = False if args.quiet else None
    pipe = Pipeline.from_pretrained(choice, pruner=pruner, device=args.device or "auto")
    if pipe.notice and not args.quiet:
        print(f"pacegeo: note: {pipe.notice}", file=sys.stderr)
    prepared = pipe.prepare(path, frames=args.frames, stride=args.stride, fps=args.fps, progress=progress)

    def run(k: float, progress: bool | None = False):
        rec = pipe.reconstruct(prepared, keep=k, seed=args.seed, progress=progress)
        return viewer.scene_from_reconstruction(rec, name=description)

    scene = run(keep, progress)
    if not args.quiet:
        print(f"reconstructed {len(scene)} frames from {description} (keep {keep:g})")
    return scene, (run if pipe.pruner is not None else None)


def add_view_parser(sub) -> None:
    """The ``pacegeo view`` sub-command."""
    p = sub.add_parser(
        "view",
        help="show a reconstruction (points, cameras) in an interactive 3D viewer in the browser",
        description=(
            "Serve an interactive 3D viewer (viser) of a scene written by pacegeo reconstruct --export npz, "
            "or of a folder of images or a video reconstructed first (then a keep slider re-runs it). "
            "Needs viser: pip install \"pacegeo[viewer]\"."
        ),
    )
    p.add_argument("input", help="scene .npz (pacegeo reconstruct --export npz), folder of images, or video file")
    p.add_argument("--port", type=int, default=8080, help="port to serve on (default 8080; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--conf-percentile", type=float, default=50.0, metavar="P",
                   help="initially drop the lowest P percent of points by confidence (default 50; a slider changes it)")
    p.add_argument("--max-points", type=int, default=None, metavar="N",
                   help="initially show at most N points (default 1,000,000; seeded random subset)")
    p.add_argument("--points-from", choices=("depth", "pointmap"), default=None,
                   help="points from depth + cameras (default) or from the point head")
    p.add_argument("--keep", type=float, default=None, metavar="K",
                   help="folder/video input: fraction of patch tokens each frame keeps, in (0, 1] (default 0.3)")
    p.add_argument("--model", default=None, help="folder/video input: " + MODEL_HELP)
    p.add_argument("--pruner", default=None, help="folder/video input: " + PRUNER_HELP)
    p.add_argument("--device", default=None, help="folder/video input: " + DEVICE_HELP)
    add_frame_selection(p)
    p.add_argument("--fps", type=float, metavar="F", help="video input: frames sampled per second of video (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of any randomness (point subsets, random pruning)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notes")
    p.set_defaults(func=_cmd_view)
    one_line_errors(p)

