"""Synthetic axial head-CT slices in Hounsfield units, with or without an acute
intracranial hemorrhage of one of the four main types.

Bleeds: intraparenchymal (a lumpy blob), subdural (a long thin
crescent against the inner table), epidural (a short biconvex lens) and
subarachnoid (thin hyperdense lines in sulci and cisterns). Every slice, with
a bleed or without, may carry what fools real readers: calcifications (pineal,
choroid plexus, falx, basal ganglia), a dense dural sinus, beam-hardening
streaks near the skull base and partial-volume bone at the inner table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

#: The phantom's grid: 256 pixels of 0.9375 mm, a 240 mm field of view.
SIZE = 256
PIXEL_MM = 240.0 / SIZE
BLEED_TYPES = ("intraparenchymal", "subdural", "epidural", "subarachnoid")
#: Bleeds smaller than this many pixels (about 8 mm^2) are not ground truth.
MIN_BLEED_PX = 9


@dataclass(frozen=True)
class HeadCtCase:
    """One slice: `hu` float32 Hounsfield units on a 0.9375 mm grid, `bleed_mask` bool."""

    hu: np.ndarray
    bleed_mask: np.ndarray
    bleed_types: tuple[str, ...] = field(default=())
    pixel_spacing_mm: float = PIXEL_MM

    @property
    def has_bleed(self) -> bool:
        return bool(self.bleed_mask.any())


@lru_cache(maxsize=2)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return (y - size / 2) * PIXEL_MM, (x - size / 2) * PIXEL_MM


def _noise(rng: np.random.Generator, cells: int, sigma: float) -> np.ndarray:
    small = cv2.GaussianBlur(rng.standard_normal((cells, cells)).astype(np.float32), (0, 0), sigma)
    out = cv2.resize(small, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    return out / (np.abs(out).max() + 1e-6)


class _Head:
    """The head's geometry in millimetres: an ellipse for the inner table, and
    for every pixel its normalised radius (1 at the inner table) and angle."""

    def __init__(self, rng: np.random.Generator) -> None:
        y, x = _grid(SIZE)
        self.a = rng.uniform(60, 74)      # lateral semi-axis of the inner table
        self.b = rng.uniform(74, 92)      # antero-posterior
        self.cx, self.cy = rng.uniform(-8, 8), rng.uniform(-8, 8)
        ang = rng.uniform(-0.15, 0.15)
        c, s = np.float32(np.cos(ang)), np.float32(np.sin(ang))
        dx, dy = x - np.float32(self.cx), y - np.float32(self.cy)
        self.u, self.v = dx * c + dy * s, dy * c - dx * s   # mm, head frame (v: posterior)
        wobble = 1 + 0.02 * _noise(rng, 6, 0.8)
        self.rho = np.sqrt((self.u / self.a) ** 2 + (self.v / self.b) ** 2) / wobble
        self.phi = np.arctan2(self.v / self.b, self.u / self.a)
        self.mean_radius_mm = 0.5 * (self.a + self.b)

    def depth_mm(self) -> np.ndarray:
        """Approximate distance inward from the inner table, in mm."""
        return (1 - self.rho) * self.mean_radius_mm


def generate(rng: np.random.Generator, bleed: bool | None = None) -> HeadCtCase:
    """One slice. `bleed` forces a positive or negative; None draws it (half and half)."""
    if bleed is None:
        bleed = bool(rng.random() < 0.5)
    head = _Head(rng)
    level = rng.choice(["base", "ventricles", "high"], p=[0.25, 0.5, 0.25])
    hu = np.full((SIZE, SIZE), -1000.0, np.float32)
    skull_mm = rng.uniform(4, 9) * (1.4 if level == "high" else 1.0)
    outer = 1 + skull_mm / head.mean_radius_mm
    scalp = outer + rng.uniform(3, 6) / head.mean_radius_mm
    hu[head.rho < scalp] = rng.uniform(20, 50)
    bone = (head.rho >= 1.0) & (head.rho < outer)
    diploe = np.abs(head.rho - (1 + outer) / 2) < 0.25 * (outer - 1)
    hu[bone] = rng.uniform(1100, 1600)
    hu[bone & diploe] = rng.uniform(500, 900)
    brain = head.rho < 1.0

    # Parenchyma: grey matter near the surface, white matter inside, gyral texture.
    depth = head.depth_mm()
    grey, white = rng.uniform(36, 42), rng.uniform(24, 31)
    cortex = np.clip(1 - (depth - rng.uniform(3, 6)) / 6, 0, 1)
    hu[brain] = (white + (grey - white) * cortex + 3 * _noise(rng, 24, 1.0))[brain]
    sulci = (np.abs(_noise(rng, 40, 1.2)) < 0.06) & (depth < rng.uniform(8, 16)) & brain
    csf = rng.uniform(2, 10)
    hu[sulci] = csf
    _ventricles_and_midline(rng, head, hu, level, csf)
    if level == "base":
        _skull_base(rng, head, hu)

    mask = np.zeros((SIZE, SIZE), bool)
    types: list[str] = []
    if bleed:
        for _ in range(1 if rng.random() < 0.85 else 2):
            kind = BLEED_TYPES[int(rng.integers(len(BLEED_TYPES)))]
            region = _BLEEDS[kind](rng, head, sulci, level) & brain
            if region.sum() >= MIN_BLEED_PX:
                blood = rng.uniform(50, 85)
                hu[region] = blood + 3 * _noise(rng, 30, 1.0)[region]
                mask |= region
                types.append(kind)

    _lookalikes(rng, head, hu, level, brain)
    # Reconstruction: a little blur (the kernel), then quantum noise.
    hu = cv2.GaussianBlur(hu, (0, 0), rng.uniform(0.5, 0.9))
    hu += rng.uniform(3, 7) * cv2.GaussianBlur(
        rng.standard_normal((SIZE, SIZE)).astype(np.float32), (0, 0), 0.7) * 1.6
    return HeadCtCase(hu.astype(np.float32), mask, tuple(types))


def _ventricles_and_midline(rng: np.random.Generator, head: _Head, hu: np.ndarray,
                            level: str, csf: float) -> None:
    if level == "ventricles":
        spread = rng.uniform(6, 12)
        for side in (-1, 1):  # frontal horns and bodies: tilted ellipses
            cu, cv = side * spread, rng.uniform(-25, -5)
            du, dv = head.u - cu, head.v - cv
            t = side * rng.uniform(0.2, 0.5)
            e = ((du * np.cos(t) + dv * np.sin(t)) / rng.uniform(4, 9)) ** 2 + \
                ((dv * np.cos(t) - du * np.sin(t)) / rng.uniform(14, 26)) ** 2
            hu[e < 1] = csf
        hu[(np.abs(head.u) < 1.2) & (head.v > 5) & (head.v < 18)] = csf  # third ventricle
    # The falx: a slightly dense midline line between the hemispheres.
    falx = (np.abs(head.u) < 0.9) & (head.rho < 0.97) & ((head.v < -30) | (head.v > 25))
    hu[falx] = rng.uniform(40, 55)


def _skull_base(rng: np.random.Generator, head: _Head, hu: np.ndarray) -> None:
    """Petrous bones, the clivus and air cells; streaks come with the look-alikes."""
    for side in (-1, 1):
        cu, cv = side * rng.uniform(25, 35), rng.uniform(0, 15)
        du, dv = head.u - cu, head.v - cv
        t = side * rng.uniform(0.5, 0.9)
        e = ((du * np.cos(t) + dv * np.sin(t)) / rng.uniform(14, 22)) ** 2 + \
            ((dv * np.cos(t) - du * np.sin(t)) / rng.uniform(4, 7)) ** 2
        hu[e < 1] = rng.uniform(900, 1500)
        if rng.random() < 0.6:  # mastoid air cells
            cells = (e < 1) & (_noise(rng, 60, 0.8) > 0.3)
            hu[cells] = -900
    clivus = ((head.u / rng.uniform(5, 8)) ** 2 + ((head.v + 15) / rng.uniform(7, 11)) ** 2) < 1
    hu[clivus] = rng.uniform(700, 1200)


def _lookalikes(rng: np.random.Generator, head: _Head, hu: np.ndarray, level: str,
                brain: np.ndarray) -> None:
    """Dense things that are not blood, drawn over bleeds and normal brain alike."""
    def spot(cu: float, cv: float, r_mm: float, value: float) -> None:
        hu[((head.u - cu) ** 2 + (head.v - cv) ** 2) < r_mm ** 2] = value

    if level == "ventricles" and rng.random() < 0.6:  # pineal gland
        spot(rng.uniform(-1, 1), rng.uniform(18, 26), rng.uniform(1.5, 3.5), rng.uniform(120, 400))
    if level == "ventricles" and rng.random() < 0.5:  # choroid plexus, both sides
        for side in (-1, 1):
            spot(side * rng.uniform(12, 20), rng.uniform(15, 30), rng.uniform(1.5, 4),
                 rng.uniform(90, 300))
    if rng.random() < 0.3:  # basal ganglia calcifications
        for side in (-1, 1):
            spot(side * rng.uniform(15, 25), rng.uniform(-10, 10), rng.uniform(1.5, 4),
                 rng.uniform(80, 200))
    if rng.random() < 0.35:  # falx calcification plaques
        v0 = rng.choice([-1, 1]) * rng.uniform(30, 60)
        plaque = (np.abs(head.u) < rng.uniform(1, 2)) & (np.abs(head.v - v0) < rng.uniform(3, 9))
        hu[plaque & brain] = rng.uniform(150, 500)
    if rng.random() < 0.4:  # dense superior sagittal sinus: the "delta" at the back
        tri = (head.v > head.b * 0.86) & (np.abs(head.u) < (head.v - head.b * 0.86) * 0.8 + 1) & brain
        hu[tri] = rng.uniform(50, 70)
    if level == "base" or rng.random() < 0.15:  # beam-hardening streaks
        for _ in range(int(rng.integers(2, 6))):
            p0 = np.array([rng.uniform(-35, 35), rng.uniform(-5, 20)])
            ang = rng.uniform(0, np.pi)
            n = np.array([-np.sin(ang), np.cos(ang)])
            dist = np.abs((head.u - p0[0]) * n[0] + (head.v - p0[1]) * n[1])
            streak = np.exp(-(dist / rng.uniform(0.6, 1.5)) ** 2)
            hu += (rng.choice([-1, 1]) * rng.uniform(15, 45) * streak * brain).astype(np.float32)
        if level == "base":  # the Hounsfield bar between the petrous bones
            bar = (np.abs(head.v - rng.uniform(0, 12)) < rng.uniform(2, 5)) & (np.abs(head.u) < 30)
            hu[bar & brain] -= rng.uniform(10, 30)
    if rng.random() < 0.45:  # partial-volume bone at the inner table (an oblique cut)
        start, span = rng.uniform(0, 2 * np.pi), rng.uniform(0.4, 1.6)
        w = _arc(head.phi, start, span)
        reach = rng.uniform(2, 7) * w
        d = head.depth_mm()
        pv = brain & (d < reach)
        frac = np.clip(1 - d / np.maximum(reach, 1e-3), 0, 1)
        hu[pv] = (hu + frac ** 1.5 * rng.uniform(250, 700))[pv]


def _arc(phi: np.ndarray, start: float, span: float) -> np.ndarray:
    """0..1..0 over an arc of the inner table (sine bump), 0 elsewhere."""
    t = np.mod(phi - start, 2 * np.pi) / span
    bump = np.where(t <= 1, np.sin(np.pi * np.clip(t, 0, 1)), 0)
    return np.maximum(bump, 0).astype(np.float32)  # float32 sin(pi) < 0


def _subdural(rng, head: _Head, sulci, level) -> np.ndarray:
    span = rng.uniform(1.0, 2.4)
    profile = _arc(head.phi, rng.uniform(0, 2 * np.pi), span) ** 0.35  # flat, tapered ends
    thickness = rng.uniform(2.5, 10) * profile
    return (head.depth_mm() < thickness) & (profile > 0)


def _epidural(rng, head: _Head, sulci, level) -> np.ndarray:
    span = rng.uniform(0.35, 0.8)
    profile = np.sqrt(_arc(head.phi, rng.uniform(0, 2 * np.pi), span))  # biconvex
    thickness = rng.uniform(7, 18) * profile
    return (head.depth_mm() < thickness) & (profile > 0)


def _intraparenchymal(rng, head: _Head, sulci, level) -> np.ndarray:
    r = rng.uniform(0.15, 0.6)
    ang = rng.uniform(0, 2 * np.pi)
    cu, cv = r * head.a * np.cos(ang), r * head.b * np.sin(ang)
    ra, rb = rng.uniform(3, 16), rng.uniform(3, 16)
    lumpy = 1 + 0.25 * _noise(rng, 30, 1.0)
    return (((head.u - cu) / ra) ** 2 + ((head.v - cv) / rb) ** 2) < lumpy


def _subarachnoid(rng, head: _Head, sulci, level) -> np.ndarray:
    if level == "base" or rng.random() < 0.3:  # basal cisterns: a star around the midbrain
        star = np.zeros(sulci.shape, bool)
        for k in range(int(rng.integers(3, 6))):
            ang = rng.uniform(0, 2 * np.pi)
            n = np.array([-np.sin(ang), np.cos(ang)])
            along = head.u * np.cos(ang) + head.v * np.sin(ang)
            across = np.abs(head.u * n[0] + head.v * n[1])
            star |= (across < rng.uniform(0.8, 1.8)) & (along > 4) & (along < rng.uniform(15, 35))
        return star
    # Blood in the sulci of one region (and the sylvian fissure running into it).
    start, span = rng.uniform(0, 2 * np.pi), rng.uniform(0.6, 1.8)
    region = _arc(head.phi, start, span) > 0.2
    filled = cv2.dilate(sulci.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool)
    return filled & region & (head.depth_mm() < 18)


_BLEEDS = {"intraparenchymal": _intraparenchymal, "subdural": _subdural,
           "epidural": _epidural, "subarachnoid": _subarachnoid}
