"""Reading frames from a video file, sampled at a fixed rate.

Decoding uses PyAV (FFmpeg's libraries, shipped inside the ``av`` wheel), so every container and
codec FFmpeg reads works: mp4, mov, avi, mkv, webm, ... Frames come out as upright ``[H, W, 3]``
uint8 RGB: the display rotation that phones store in the stream (90, 180 or 270 degrees) is
applied.

Sampling keeps the first decoded frame whose timestamp reaches each multiple of ``1 / fps``
seconds, so a 30 fps clip sampled at ``fps=2`` gives frames at 0, 0.5, 1.0, ... seconds. A video
that is shorter or sparser than that gives every frame it has.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pacegeo.errors import InputError
from pacegeo.extras import require

logger = logging.getLogger(__name__)

#: File extensions taken to be videos (case-insensitive).
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts", ".mts"}
)

#: Default sampling rate, in frames per second of video time.
DEFAULT_FPS = 2.0

__all__ = ["DEFAULT_FPS", "VIDEO_EXTENSIONS", "VideoFrame", "VideoInfo", "is_video_file", "probe_video", "read_video_frames"]


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream.

    Attributes:
        path: the video file.
        width, height: coded frame size in pixels (before display rotation).
        fps: average frame rate (0.0 when unknown).
        duration_s: duration in seconds (0.0 when unknown).
        codec: codec name, e.g. ``"h264"``.
    """

    path: Path
    width: int
    height: int
    fps: float
    duration_s: float
    codec: str


@dataclass(frozen=True)
class VideoFrame:
    """One sampled frame: ``rgb [H, W, 3]`` uint8 (upright), its time in seconds and a file-like name
    (``<video stem>_<time in ms, 7 digits>ms.png``) used in exports."""

    rgb: np.ndarray
    time_s: float
    name: str


def is_video_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` has a video file extension (it is not opened)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _open(path: Path):
    """Open ``path`` with PyAV and return ``(container, first video stream)``; errors are :class:`InputError`."""
    av = require("av", "video input")
    if not path.exists():
        raise InputError(f"video not found: {path}")
    if not path.is_file():
        raise InputError(f"cannot read video {path}: not a file")
    if path.stat().st_size == 0:
        raise InputError(f"cannot read video {path}: the file is empty")
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise InputError(f"cannot read video {path}: unsupported or corrupt file ({_one_line(exc)})") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"cannot read video {path}: it has no video stream")
    return container, container.streams.video[0]


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Open a video and describe its first video stream without decoding it.

    Raises:
        InputError: the file is missing, empty, not a video FFmpeg can read, or has no video stream.
    """
    path = Path(path)
    container, stream = _open(path)
    try:
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        else:
            duration = 0.0
        codec = stream.codec_context.name if stream.codec_context is not None else "unknown"
        return VideoInfo(path, int(stream.width or 0), int(stream.height or 0), fps, duration, codec)
    finally:
        container.close()


def _upright(frame) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB of a PyAV frame with its display rotation applied."""
    rgb = frame.to_ndarray(format="rgb24")
    rotation = getattr(frame, "rotation", 0) or 0  # degrees counter-clockwise, from the display matrix
    turns = int(round(rotation / 90.0)) % 4
    if turns:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=turns))
    return rgb


def iter_video_frames(path: str | os.PathLike, fps: float = DEFAULT_FPS) -> Iterator[VideoFrame]:
    """Decode ``path`` and yield frames sampled at ``fps`` (see the module docstring), one at a time.

    Raises:
        InputError: bad ``fps``, a file that cannot be opened, or a stream that fails to decode
            before any frame was produced. Damage later in the stream ends the sequence early with
            a logged warning.
    """
    if not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise InputError(f"fps must be a positive number, got {fps!r}")
    av = require("av", "video input")
    path = Path(path)
    container, stream = _open(path)
    period = 1.0 / float(fps)
    next_time = 0.0
    produced = 0
    index = -1
    try:
        stream.thread_type = "AUTO"
        frame_rate = float(stream.average_rate) if stream.average_rate else 0.0
        try:
            for frame in container.decode(stream):
                index += 1
                time_s = frame.time
                if time_s is None:  # no timestamps: fall back to the frame index
                    time_s = index / frame_rate if frame_rate > 0 else float(index) * period
                if time_s + 1e-6 < next_time:
                    continue
                rgb = _upright(frame)
                produced += 1
                yield VideoFrame(rgb=rgb, time_s=float(time_s), name=f"{path.stem}_{round(time_s * 1000):07d}ms.png")
                next_time = (math.floor(time_s / period + 1e-6) + 1) * period
        except av.error.FFmpegError as exc:
            if produced == 0:
                raise InputError(f"cannot decode video {path}: {_one_line(exc)}") from None
            logger.warning("video %s is damaged after %d sampled frames; using those (%s)", path, produced, _one_line(exc))
    finally:
        container.close()
    if produced == 0:
        raise InputError(f"video {path} has no decodable frames")


def read_video_frames(path: str | os.PathLike, fps: float = DEFAULT_FPS, max_frames: int | None = None) -> list[VideoFrame]:
    """All frames of :func:`iter_video_frames` (at most ``max_frames``) as a list."""
    frames = []
    for frame in iter_video_frames(path, fps):
        frames.append(frame)
        if max_frames is not None and len(frames) >= max_frames:
            break
    return frames
