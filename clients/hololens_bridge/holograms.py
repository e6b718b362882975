"""What the crew's glasses draw for each anchored annotation, in the headset's frame.

The headset's remote-scene interface (hl2ss's Unity messages) knows only a few
primitives: sphere, cylinder, cube, quad, and text. Strokes and arrows become
chains of thin cylinders, decimated so that one stroke costs at most
`MAX_SEGMENTS` objects; points are spheres; measurements and labels are
text facing the wearer; a shared image is a textured quad. Geometry is
computed in our world frame (docs/geometry.md) and converted once, here, to
Unity's left-handed frame.
"""

from __future__ import annotations

import itertools
import math
import struct
from dataclasses import dataclass, field

import numpy as np

from clients.hololens_bridge import hl2ss_wire as wire
from vision.camera import quaternion_xyzw, unity_from_world_points

#: At most this many cylinders per stroke, whatever its length.
MAX_SEGMENTS = 24
#: A stroke is simplified until no dropped point lies further than this off the chain.
DECIMATE_TOLERANCE_M = 0.0015
STROKE_DIAMETER_M = 0.004
POINT_DIAMETER_M = 0.012
TEXT_OFFSET_M = 0.025
TEXT_FONT_SIZE = 0.06  # Unity TextMesh character size (metres per unit font)
ARROW_BARB_M = 0.02
ARROW_BARB_ANGLE_DEG = 28.0
UNITS = {"mm": "mm", "mm2": "mm²", "deg": "°"}


@dataclass(frozen=True)
class Hologram:
    """One object in the headset's scene, in Unity's frame (left-handed, +Y up, metres).

    Unity's primitives: a cylinder is 2 units tall along its local +Y and 1
    wide; a sphere and a cube are 1 wide; a quad is 1x1 facing local -Z; a
    text reads from local -Z. `scale` multiplies those sizes.
    """

    kind: str  # sphere | cylinder | cube | quad | text
    position_unity_m: tuple[float, float, float]
    rotation_unity_xyzw: tuple[float, float, float, float]
    scale: tuple[float, float, float]
    rgba: tuple[float, float, float, float]
    text: str = ""
    font_size: float = 0.0
    texture: bytes = b""
    #: What it stands for, for tests and previews: the world points it covers.
    points_world_m: tuple[tuple[float, float, float], ...] = field(default=(), compare=False)


def image_bytes(annotation: dict) -> bytes:
    """A shared image's file: the server sends bytes as base64 text (msgspec's
    builtins), whatever the encoding; bytes are taken as they are."""
    data = annotation.get("image_data") or b""
    if isinstance(data, str):
        import base64
        return base64.b64decode(data)
    return bytes(data)


def rgba_of(color: str, alpha: float = 1.0) -> tuple[float, float, float, float]:
    """`#rrggbb` as Unity's float RGBA."""
    value = color.lstrip("#")
    if len(value) != 6:
        raise ValueError(f"colour {color!r} is not #rrggbb")
    r, g, b = (int(value[i:i + 2], 16) / 255.0 for i in (0, 2, 4))
    return (round(r, 6), round(g, 6), round(b, 6), alpha)


def decimate(points_m: np.ndarray, tolerance_m: float = DECIMATE_TOLERANCE_M,
             max_segments: int = MAX_SEGMENTS) -> np.ndarray:
    """Ramer-Douglas-Peucker in 3D, loosened until at most `max_segments` remain."""
    points_m = np.asarray(points_m, dtype=np.float64)
    if len(points_m) <= 2:
        return points_m
    while True:
        keep = _rdp(points_m, tolerance_m)
        if keep.sum() - 1 <= max_segments:
            return points_m[keep]
        tolerance_m *= 1.5


def _rdp(points: np.ndarray, tolerance: float) -> np.ndarray:
    keep = np.zeros(len(points), bool)
    keep[0] = keep[-1] = True
    stack = [(0, len(points) - 1)]
    while stack:
        first, last = stack.pop()
        if last - first < 2:
            continue
        a, b = points[first], points[last]
        inner = points[first + 1:last]
        ab = b - a
        length = np.linalg.norm(ab)
        if length < 1e-12:
            distances = np.linalg.norm(inner - a, axis=1)
        else:
            distances = np.linalg.norm(np.cross(inner - a, ab / length), axis=1)
        worst = int(np.argmax(distances))
        if distances[worst] > tolerance:
            split = first + 1 + worst
            keep[split] = True
            stack.extend([(first, split), (split, last)])
    return keep


def _rotation_with_y_along(direction: np.ndarray) -> np.ndarray:
    """A rotation (columns x, y, z) whose local +Y points along `direction`."""
    y = direction / np.linalg.norm(direction)
    helper = np.array([1.0, 0.0, 0.0]) if abs(y[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
    x = np.cross(y, helper)
    x /= np.linalg.norm(x)
    z = np.cross(x, y)
    return np.column_stack([x, y, z])


def _rotation_facing(position: np.ndarray, viewer: np.ndarray) -> np.ndarray:
    """A rotation whose local +Z points from the viewer to `position`, +Y up:
    a quad or a text there faces the viewer (Unity's LookRotation)."""
    z = position - viewer
    z[1] = 0.0 if np.linalg.norm(z[[0, 2]]) > 1e-6 else z[1]
    norm = np.linalg.norm(z)
    z = z / norm if norm > 1e-9 else np.array([0.0, 0.0, 1.0])
    up = np.array([0.0, 1.0, 0.0])
    x = np.cross(up, z)
    if np.linalg.norm(x) < 1e-9:
        x = np.array([1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.column_stack([x, y, z])


def _quat(R: np.ndarray) -> tuple[float, float, float, float]:
    return tuple(round(float(v), 7) for v in quaternion_xyzw(R))  # type: ignore[return-value]


def _vec(v: np.ndarray) -> tuple[float, float, float]:
    return (round(float(v[0]), 6), round(float(v[1]), 6), round(float(v[2]), 6))


def _identity() -> tuple[float, float, float, float]:
    return (0.0, 0.0, 0.0, 1.0)


def segment(a_unity: np.ndarray, b_unity: np.ndarray, rgba, diameter_m: float = STROKE_DIAMETER_M,
            points_world_m=()) -> Hologram | None:
    """A thin cylinder from a to b (Unity frame); None if they coincide."""
    direction = b_unity - a_unity
    length = float(np.linalg.norm(direction))
    if length < 1e-5:
        return None
    return Hologram("cylinder", _vec((a_unity + b_unity) / 2), _quat(_rotation_with_y_along(direction)),
                    (diameter_m, round(length / 2, 6), diameter_m), rgba,
                    points_world_m=points_world_m)


def sphere(p_unity: np.ndarray, rgba, diameter_m: float = POINT_DIAMETER_M,
           points_world_m=()) -> Hologram:
    return Hologram("sphere", _vec(p_unity), _identity(), (diameter_m,) * 3, rgba,
                    points_world_m=points_world_m)


def text(p_unity: np.ndarray, viewer_unity: np.ndarray, words: str, rgba) -> Hologram:
    return Hologram("text", _vec(p_unity), _quat(_rotation_facing(p_unity, viewer_unity)),
                    (1.0, 1.0, 1.0), rgba, text=words, font_size=TEXT_FONT_SIZE)


def caption_of(annotation: dict) -> str:
    """The words shown with an annotation: its label text and its measurements,
    by the console's rules (a freehand stroke or an arrow is not a measurement)."""
    words = []
    if annotation.get("text"):
        words.append(str(annotation["text"]))
    for m in annotation.get("measurements") or []:
        if m["name"] == "perimeter":
            continue
        if m["name"] == "length" and not str(annotation.get("client_ref") or "").startswith("polyline"):
            continue
        digits = 0 if m["unit"] == "deg" else 1
        words.append(f"{m['value']:.{digits}f} ± {m['sigma']:.{digits}f} {UNITS.get(m['unit'], m['unit'])}")
    return " · ".join(words)


def holograms_for(annotation: dict, viewer_world_m: np.ndarray) -> list[Hologram]:
    """The objects that draw one anchored `annotation` message (docs/protocol.md §6a)
    for a wearer whose head is at `viewer_world_m` (texts and panels face it)."""
    points_world = np.asarray(annotation["points_world_m"], dtype=np.float64).reshape(-1, 3)
    points = unity_from_world_points(points_world)
    viewer = unity_from_world_points(np.asarray(viewer_world_m, dtype=np.float64))
    rgba = rgba_of(annotation.get("color") or "#ffffff")
    kind = annotation["kind"]
    out: list[Hologram] = []

    def chain(indices_points: np.ndarray, closed: bool = False) -> None:
        simplified = decimate(indices_points)
        if closed and len(simplified) > 2:
            simplified = np.vstack([simplified, simplified[:1]])
        for a, b in itertools.pairwise(simplified):
            piece = segment(a, b, rgba)
            if piece is not None:
                out.append(piece)

    if kind == "image":
        centre = points[0]
        R = _rotation_facing(centre, viewer)
        out.append(Hologram(
            "quad", _vec(centre), _quat(R),
            (float(annotation.get("panel_width_m", 0.3)), float(annotation.get("panel_height_m", 0.2)), 1.0),
            (1.0, 1.0, 1.0, 1.0), texture=image_bytes(annotation),
            points_world_m=(tuple(points_world[0]),)))
    elif kind in ("point", "label"):
        out.append(sphere(points[0], rgba, points_world_m=(tuple(points_world[0]),)))
    elif kind in ("stroke", "arrow", "ruler", "angle"):
        chain(points)
        if kind in ("ruler", "angle"):
            out.extend(sphere(p, rgba, POINT_DIAMETER_M / 2) for p in points[[0, -1]])
        if kind == "arrow" and len(points) >= 2:
            out.extend(_arrow_head(points, np.asarray(annotation.get("normals_world") or [], float), rgba))
    elif kind in ("ellipse", "polygon"):
        chain(points, closed=True)
    words = caption_of(annotation)
    if words:
        # Beside the last point, lifted towards the wearer so the surface does not hide it.
        at = points[-1] + np.array([0.0, TEXT_OFFSET_M, 0.0])
        out.append(text(at, viewer, f"{annotation.get('author_name', '')}: {words}".strip(": "), rgba))
    return out


def _arrow_head(points_unity: np.ndarray, normals_world: np.ndarray, rgba) -> list[Hologram]:
    """Two barbs at the tip, in the surface's tangent plane."""
    tip = points_unity[-1]
    back = next((p for p in points_unity[-2::-1] if np.linalg.norm(tip - p) > 0.005), points_unity[0])
    shaft = tip - back
    if np.linalg.norm(shaft) < 1e-6:
        return []
    shaft /= np.linalg.norm(shaft)
    normal = (unity_from_world_points(normals_world[-1]) if len(normals_world)
              else np.array([0.0, 1.0, 0.0]))
    side = np.cross(normal, shaft)
    if np.linalg.norm(side) < 1e-6:
        side = np.cross(np.array([0.0, 1.0, 0.0]), shaft)
    side /= np.linalg.norm(side)
    angle = math.radians(ARROW_BARB_ANGLE_DEG)
    barbs = []
    for sign in (1.0, -1.0):
        end = tip + ARROW_BARB_M * (-math.cos(angle) * shaft + sign * math.sin(angle) * side)
        piece = segment(tip, end, rgba)
        if piece is not None:
            barbs.append(piece)
    return barbs


def commands_for(hologram: Hologram) -> list[wire.Command]:
    """The messages that create one hologram. Target mode "use last" lets the whole
    group configure the object it creates without waiting for its key; the
    key is the create's result (the group's first)."""
    h = hologram
    create = wire.create_text() if h.kind == "text" else wire.create_primitive(h.kind)
    commands = [create, wire.set_target_mode(wire.TARGET_USE_LAST),
                wire.set_world_transform(0, h.position_unity_m, h.rotation_unity_xyzw, h.scale)]
    if h.kind == "text":
        commands.append(wire.set_text(0, h.font_size, h.rgba, h.text))
    else:
        commands.append(wire.set_color(0, h.rgba))
    if h.texture:
        commands.append(wire.set_texture(0, h.texture))
    commands += [wire.set_active(0, True), wire.set_target_mode(wire.TARGET_USE_ID)]
    return commands


#: Where the AI result panel hangs, head-locked (Unity camera frame: x right,
#: y up, z forward, metres): low and to the right, out of the line of sight.
PANEL_LOCAL_POSITION_M = (0.16, -0.09, 0.6)
PANEL_SIZE_M = (0.16, 0.12)


def overlay_panel_png(overlay: dict, width: int = 480, height: int = 360) -> bytes:
    """The picture the glasses show for a model's `overlay` (docs/protocol.md §6):
    the contours and the model's labels, drawn by the server's one overlay
    renderer, so "not for clinical use" reads the same everywhere."""
    import cv2

    from server.inference.overlay import render
    from server.inference.runtime import InferenceResult
    result = InferenceResult(
        model=str(overlay["model"]), version=str(overlay["version"]),
        not_for_clinical_use=bool(overlay.get("not_for_clinical_use", True)),
        probability=float(overlay["probability"]), threshold=float(overlay["threshold"]),
        probability_map=None,
        contours_uv_norm=[[tuple(p) for p in c] for c in overlay.get("contours") or []],
        provenance=dict(overlay.get("input") or {}), inference_ms=float(overlay.get("inference_ms", 0.0)))
    canvas = np.full((height, width), 24, np.uint8)
    ok, png = cv2.imencode(".png", render(canvas, result, heatmap=False))
    assert ok
    return png.tobytes()


def panel_commands(png: bytes) -> list[wire.Command]:
    """Create the head-locked result panel (a textured quad parented to the camera)."""
    return [wire.create_primitive("quad"), wire.set_target_mode(wire.TARGET_USE_LAST),
            wire.Command(wire.Rus.SET_LOCAL_TRANSFORM, struct.pack(
                "<I10f", 0, *PANEL_LOCAL_POSITION_M, 0.0, 0.0, 0.0, 1.0, *PANEL_SIZE_M, 1.0)),
            wire.set_texture(0, png), wire.set_active(0, True),
            wire.set_target_mode(wire.TARGET_USE_ID)]
