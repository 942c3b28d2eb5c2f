"""Parameters of the SynthRooms scene and trajectory generator (:class:`SynthConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

from pacegeo.errors import InputError


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the scene and trajectory generator (all lengths in metres, angles in degrees).

    Attributes:
        room_side: range of each side of the room's bounding rectangle.
        room_height: range of the ceiling height.
        l_shape_prob: probability that the room is L-shaped rather than rectangular.
        window_prob: probability that a room has windows (holes that show the sky; depth 0 there).
        num_objects: range of the number of furniture-like objects.
        num_posters: range of the number of posters/pictures on the walls.
        num_lights: range of the number of point lights.
        fov: range of the horizontal field of view; drawn once per scene (set both ends equal
            to fix it).
        camera_height: range of the camera height above the floor.
        step: range of the camera translation per frame (drawn once per trajectory).
        max_turn_per_frame: rough bound on the mean view rotation per frame.
        max_roll: bound on the camera roll around the optical axis.
        wall_margin: minimum distance of the camera path from walls and objects.
        photometric: enable sensor effects (noise, mild blur, vignetting, exposure changes).
        mesh_spacing: maximum vertex spacing of the ground-truth mesh written next to a scene.
        mesh_observed_only: keep only mesh vertices seen (unoccluded) by at least one frame, like
            a scanned mesh; otherwise write the whole room.
        jpeg_quality: quality of the colour JPEGs.
    """

    room_side: tuple[float, float] = (3.0, 10.0)
    room_height: tuple[float, float] = (2.4, 3.5)
    l_shape_prob: float = 0.35
    window_prob: float = 0.5
    num_objects: tuple[int, int] = (6, 16)
    num_posters: tuple[int, int] = (1, 5)
    num_lights: tuple[int, int] = (2, 4)
    fov: tuple[float, float] = (50.0, 90.0)
    camera_height: tuple[float, float] = (1.0, 1.8)
    step: tuple[float, float] = (0.03, 0.07)
    max_turn_per_frame: float = 3.0
    max_roll: float = 4.0
    wall_margin: float = 0.45
    photometric: bool = True
    mesh_spacing: float = 0.04
    mesh_observed_only: bool = True
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        for name in ("room_side", "room_height", "num_objects", "num_posters", "num_lights", "fov",
                     "camera_height", "step"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise InputError(f"SynthConfig.{name} must be (low, high) with low <= high, got {(lo, hi)}")
        if not (1.0 <= self.fov[0] and self.fov[1] < 179.0):
            raise InputError(f"SynthConfig.fov must lie in [1, 179) degrees, got {self.fov}")
        if self.room_side[0] < 2.0 * self.wall_margin + 1.0:
            raise InputError("SynthConfig.room_side is too small for the camera margin")
