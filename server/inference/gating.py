"""Input gates: is this picture what the model's card accepts?

A model trained on synthetic head CT will call a real neck CT "hemorrhage"
with 99% confidence (docs/models.md). So nothing reaches a model without
passing its gate, and a refusal always says why, in words a clinician can act
on. Metadata is checked first (cheap, and it catches most wrong inputs before
any decoding); then the decoded pixels are checked for what metadata can hide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from server.imaging.dicom import DicomError, DicomImage
from server.inference.cards import HeadCtGate, UltrasoundGate

#: Photometric interpretations we can turn into greyscale B-mode.
_US_PHOTOMETRIC = {"MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR",
                   "YBR_RCT", "YBR_ICT"}
#: Bone, in HU, for the skull test; air below this is outside the body.
_BONE_HU, _BODY_HU = 300.0, -300.0


class Refused(Exception):
    """The input is not for this model; str() is the reason."""


@dataclass(frozen=True)
class CtSlice:
    """An accepted head-CT slice: HU pixels and where they came from."""

    hu: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    provenance: dict = field(default_factory=dict)


@dataclass(frozen=True)
class UltrasoundFrames:
    """Accepted B-mode frames (uint8 greyscale, [frames, rows, cols]) and their origin."""

    frames: np.ndarray
    fps: float | None
    provenance: dict = field(default_factory=dict)


def _provenance(image: DicomImage) -> dict:
    return {"source": image.source, "sop_instance_uid": image.sop_instance_uid,
            "modality": image.modality, "body_part": image.body_part or "not stated"}


def check_head_ct(image: DicomImage, gate: HeadCtGate) -> CtSlice:
    """Accept an axial head-CT slice in HU, or raise Refused with the reason."""
    if image.modality != "CT":
        raise Refused(f"modality {image.modality or 'missing'}: this model reads CT only")
    if image.body_part is not None and image.body_part not in gate.body_parts:
        raise Refused(f"body part {image.body_part}: this model reads head CT only "
                      f"({', '.join(gate.body_parts)})")
    if "LOCALIZER" in image.image_type:
        raise Refused("a localizer (scout) image, not an axial slice")
    if image.photometric != "MONOCHROME2":
        raise Refused(f"photometric interpretation {image.photometric or 'missing'}: a CT slice "
                      f"in Hounsfield units is MONOCHROME2 (this looks like a picture of a "
                      f"scan, not a scan)")
    if image.lossy and (image.lossy_ratio is None or image.lossy_ratio > gate.max_lossy_ratio):
        ratio = f"{image.lossy_ratio:.0f}:1" if image.lossy_ratio else "an unstated ratio"
        raise Refused(f"lossy-compressed at {ratio} (at most {gate.max_lossy_ratio:.0f}:1): its "
                      f"Hounsfield values have been altered")
    if image.frames != 1:
        raise Refused(f"{image.frames} frames in one object (enhanced multi-frame CT): send "
                      f"single-frame axial slices")
    if image.orientation is None:
        raise Refused("no ImageOrientationPatient: cannot tell an axial slice")
    row, col = np.array(image.orientation[:3]), np.array(image.orientation[3:])
    normal = np.cross(row, col)
    norm = float(np.linalg.norm(normal))
    if norm < 0.5:
        raise Refused("ImageOrientationPatient is not two unit vectors")
    tilt = math.degrees(math.acos(min(1.0, abs(normal[2]) / norm)))
    if tilt > gate.max_tilt_deg:
        raise Refused(f"not axial: the slice is tilted {tilt:.0f} degrees from the axial "
                      f"plane (at most {gate.max_tilt_deg:.0f})")
    if image.pixel_spacing_mm is None:
        raise Refused("no PixelSpacing: the model needs sizes in millimetres")
    low, high = gate.pixel_spacing_mm
    if not all(low <= s <= high for s in image.pixel_spacing_mm):
        raise Refused(f"pixel spacing {image.pixel_spacing_mm} mm is outside "
                      f"{low}-{high} mm")
    fov_w = image.columns * image.pixel_spacing_mm[1]
    fov_h = image.rows * image.pixel_spacing_mm[0]
    if min(fov_w, fov_h) < gate.head_width_mm[0]:
        raise Refused(f"field of view {fov_w:.0f} x {fov_h:.0f} mm is smaller than a head "
                      f"(at least {gate.head_width_mm[0]:.0f} mm across)")
    try:
        raw = image.pixels()
    except DicomError as exc:
        raise Refused(str(exc)) from None
    if raw.ndim != 2:
        raise Refused(f"pixel array of shape {raw.shape}: expected one greyscale slice")
    hu = raw.astype(np.float32) * image.rescale_slope + image.rescale_intercept
    check_head_hu(hu, image.pixel_spacing_mm, gate)
    return CtSlice(hu, image.pixel_spacing_mm, _provenance(image))


def check_head_hu(hu: np.ndarray, pixel_spacing_mm: tuple[float, float], gate: HeadCtGate,
                  ) -> None:
    """The pixel checks: plausible Hounsfield units and a head-shaped cross-section."""
    p1, p99 = np.percentile(hu, [1, 99.5])
    if p1 > -800:
        raise Refused(f"pixel values do not look like Hounsfield units: no air around the "
                      f"head (1st percentile {p1:.0f} HU, expected about -1000)")
    if p99 < _BONE_HU or hu.max() > 4000:
        raise Refused(f"pixel values do not look like head CT in Hounsfield units (highest "
                      f"{hu.max():.0f} HU; bone should reach {_BONE_HU:.0f}-3000)")
    body = (hu > _BODY_HU).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(body, connectivity=8)
    if count <= 1:
        raise Refused("no body in the picture")
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    mask = (labels == largest).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    (_, _), (w_px, h_px), _ = cv2.minAreaRect(max(contours, key=cv2.contourArea))
    # Spacing is nearly isotropic for CT; use the mean for the rotated box.
    mm = 0.5 * (pixel_spacing_mm[0] + pixel_spacing_mm[1])
    width_mm, length_mm = sorted((w_px * mm, h_px * mm))
    if not gate.head_width_mm[0] <= width_mm <= gate.head_width_mm[1] or \
            not gate.head_length_mm[0] <= length_mm <= gate.head_length_mm[1]:
        raise Refused(f"the cross-section is {width_mm:.0f} x {length_mm:.0f} mm: not "
                      f"head-sized ({gate.head_width_mm[0]:.0f}-{gate.head_width_mm[1]:.0f} x "
                      f"{gate.head_length_mm[0]:.0f}-{gate.head_length_mm[1]:.0f} mm)")
    # A skull: rays from the centre of the cross-section should meet bone before
    # leaving the body in (nearly) every direction, and what they cross before
    # the bone should be brain-like (CSF to blood, -15..100 HU).
    moments = cv2.moments(mask, binaryImage=True)
    cy, cx = moments["m01"] / moments["m00"], moments["m10"] / moments["m00"]
    hits, inside = 0, []
    steps = np.arange(0, max(hu.shape), 0.5)
    for theta in np.linspace(0, 2 * np.pi, 72, endpoint=False):
        ys = np.round(cy + steps * np.sin(theta)).astype(int)
        xs = np.round(cx + steps * np.cos(theta)).astype(int)
        keep = (ys >= 0) & (ys < hu.shape[0]) & (xs >= 0) & (xs < hu.shape[1])
        ys, xs = ys[keep], xs[keep]
        values, in_body = hu[ys, xs], mask[ys, xs] > 0
        outside = np.flatnonzero(~in_body)
        if not len(outside):
            continue  # the body runs off the picture: no closed skull this way
        end = outside[0]
        bone = np.flatnonzero(values[:end] >= _BONE_HU)
        if len(bone):
            hits += 1
            inside.append(values[:bone[0]])
    bone_fraction = hits / 72
    if bone_fraction < gate.min_bone_ray_fraction:
        raise Refused(f"no skull around the cross-section: bone surrounds "
                      f"{bone_fraction:.0%} of it (a head needs {gate.min_bone_ray_fraction:.0%})"
                      f"; is this a neck, spine or body slice?")
    samples = np.concatenate(inside) if inside else np.array([])
    brain = float(((samples >= -15) & (samples <= 100)).mean()) if len(samples) else 0.0
    if brain < gate.min_brain_fraction:
        raise Refused(f"what the skull encloses is {brain:.0%} brain-like tissue (-15..100 HU); "
                      f"a head slice has at least {gate.min_brain_fraction:.0%}")


def check_ultrasound_dicom(image: DicomImage, gate: UltrasoundGate,
                           max_frames: int | None = None) -> UltrasoundFrames:
    """Accept a B-mode ultrasound image or cine, or raise Refused with the reason.

    `max_frames` decodes only that many frames, evenly spread over a cine
    (decoding can cost more than the model: a JPEG cine of 120 frames takes
    seconds)."""
    if image.modality != "US":
        raise Refused(f"modality {image.modality or 'missing'}: this model reads ultrasound "
                      f"only")
    if image.body_part is not None and gate.body_parts and image.body_part not in gate.body_parts:
        raise Refused(f"body part {image.body_part}: this model reads "
                      f"{', '.join(gate.body_parts)} ultrasound only")
    if image.photometric not in _US_PHOTOMETRIC:
        raise Refused(f"photometric interpretation {image.photometric or 'missing'} is not one "
                      f"this runtime turns into greyscale B-mode")
    check_frame_size(image.columns, image.rows, gate)
    if image.frames > 1 and image.fps is not None and image.fps < gate.min_fps:
        raise Refused(f"a cine at {image.fps:.1f} frames/s: the model needs at least "
                      f"{gate.min_fps:.0f} for live use")
    colour = image.photometric != "MONOCHROME2"
    indices = list(range(image.frames))
    if max_frames is not None and image.frames > max_frames:
        indices = sorted({round(i) for i in np.linspace(0, image.frames - 1, max_frames)})
    try:
        if colour:  # one decoded frame tells Doppler from B-mode before decoding a cine
            check_colour(_uint8(image.pixels(frame=0))[None], gate)
        if image.frames == 1:
            pixels = image.pixels()[None]
        elif len(indices) == image.frames:
            pixels = image.pixels()
        else:
            pixels = np.stack([image.pixels(frame=i) for i in indices])
    except DicomError as exc:
        raise Refused(str(exc)) from None
    if pixels.ndim != (4 if colour else 3):
        raise Refused(f"pixel array of shape {pixels.shape} does not match "
                      f"{image.frames} frame(s) of {image.photometric}")
    pixels = _uint8(pixels)
    if colour:
        check_colour(pixels, gate)
        pixels = np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY)
                           for f in pixels])
    return UltrasoundFrames(pixels, image.fps, dict(_provenance(image), frames=indices))


def _uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.min() < 0 or pixels.max() > 255:
        raise Refused(f"{pixels.dtype} pixels from {pixels.min()} to {pixels.max()}: B-mode "
                      f"frames are 8-bit")
    return pixels.astype(np.uint8)


def check_frame_size(width: int, height: int, gate: UltrasoundGate) -> None:
    (min_w, min_h), (max_w, max_h) = gate.min_size, gate.max_size
    if width < min_w or height < min_h:
        raise Refused(f"frame {width}x{height} is smaller than {min_w}x{min_h}")
    if width > max_w or height > max_h:
        raise Refused(f"frame {width}x{height} is larger than {max_w}x{max_h}")


def check_frame_rate(fps: float, gate: UltrasoundGate) -> None:
    if fps < gate.min_fps:
        raise Refused(f"{fps:.1f} frames/s: the model needs at least {gate.min_fps:.0f} "
                      f"for live use")


def check_colour(frames_rgb: np.ndarray, gate: UltrasoundGate, max_fraction: float = 0.04,
                 ) -> None:
    """Refuse colour Doppler: B-mode is grey, whatever the file's colour space.

    Strongly coloured pixels (channels more than 80 apart) above 4% of the
    picture: the power-Doppler files among pydicom's measure 5.1-5.4%, scanner
    screens with coloured text, icons and an ECG trace 0.1-2.9%."""
    sample = frames_rgb[:: max(1, len(frames_rgb) // 4)].astype(np.int16)
    spread = sample.max(axis=-1) - sample.min(axis=-1)
    coloured = float((spread > 80).mean())
    if coloured > max_fraction:
        raise Refused(f"{coloured:.0%} of the picture is in colour (Doppler or a colour map?): "
                      f"the model reads greyscale B-mode")
