"""Synthetic FAST-exam B-mode frames: a convex probe's fan, speckle, organs with
bright capsules, and anechoic free fluid hugging organ boundaries.

Negatives are not empty pictures: they carry the look-alikes that fool real
readers (anechoic vessels with echogenic walls, the gallbladder and simple cysts
with posterior enhancement, rib and gas shadows), and positives carry them too,
so that "dark" alone never means "fluid". The ground truth is the visible fluid.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

#: A pocket smaller than this (pixels at 256x256, about 6 mm across at a
#: 16 cm depth) is not called free fluid by the phantom: a reader could not either.
MIN_FLUID_PX_256 = 100


@dataclass(frozen=True)
class UltrasoundCase:
    """One frame and its truth: `image` uint8 greyscale, `fluid_mask` bool."""

    image: np.ndarray
    fluid_mask: np.ndarray

    @property
    def has_fluid(self) -> bool:
        return bool(self.fluid_mask.any())


@lru_cache(maxsize=8)
def _fan_geometry(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depth (0 at the skin line, 1 at the deepest), beam angle (radians) and
    the fan mask of a convex probe whose apex sits above the picture."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    apex_y = -0.30
    r = np.hypot(x - 0.5, y - apex_y)
    theta = np.arctan2(x - 0.5, y - apex_y)
    r0, r1 = 0.36, 1.26
    depth = (r - r0) / (r1 - r0)
    fan = (depth >= 0) & (depth <= 1) & (np.abs(theta) <= np.radians(36))
    return depth, theta, fan


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return y, x


def _ellipse_uv(size: int, cx: float, cy: float, a: float, b: float, angle: float,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel in the ellipse's own axes, scaled so that the ellipse is the unit circle."""
    y, x = _grid(size)
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    dx, dy = x - np.float32(cx), y - np.float32(cy)
    return (dx * c + dy * s) / np.float32(a), (dy * c - dx * s) / np.float32(b)


def _ellipse_rho(size: int, cx: float, cy: float, a: float, b: float, angle: float,
                 ) -> np.ndarray:
    """Normalised radius of every pixel: 1 on the ellipse."""
    u, v = _ellipse_uv(size, cx, cy, a, b, angle)
    return np.sqrt(u * u + v * v)


def _angle_window(phi: np.ndarray, start: float, span: float) -> np.ndarray:
    """0..1..0 bump over [start, start+span] in angle, 0 elsewhere (wraps)."""
    t = np.mod(phi - start, 2 * np.pi) / span
    bump = np.where(t <= 1.0, np.sin(np.pi * np.clip(t, 0, 1)), 0.0)
    return np.maximum(bump, 0).astype(np.float32)  # float32 sin(pi) < 0


def _smooth_noise(rng: np.random.Generator, size: int, scale: int, sigma: float) -> np.ndarray:
    small = rng.standard_normal((scale, scale)).astype(np.float32)
    small = cv2.GaussianBlur(small, (0, 0), sigma)
    out = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    return out / (np.abs(out).max() + 1e-6)


def generate(rng: np.random.Generator, size: int = 256, fluid: bool | None = None,
             speckle_rng: np.random.Generator | None = None) -> UltrasoundCase:
    """One B-mode frame. `fluid` forces a positive or a negative; None draws it
    (half and half). With `speckle_rng`, speckle and electronic noise come from
    it instead: the same anatomy (from `rng`) with fresh speckle, as in
    successive frames of a probe held still."""
    if fluid is None:
        fluid = bool(rng.random() < 0.5)
    depth, theta, fan = _fan_geometry(size)
    px = 1.0 / size
    # Echogenicity (linear amplitude before speckle): tissue with slow texture.
    echo = 0.45 + 0.12 * _smooth_noise(rng, size, 12, 1.0)
    organs = []
    for _ in range(int(rng.integers(1, 3))):
        cx, cy = rng.uniform(0.25, 0.75), rng.uniform(0.35, 0.85)
        a, b = rng.uniform(0.16, 0.34), rng.uniform(0.10, 0.22)
        angle = rng.uniform(-0.6, 0.6)
        rho = _ellipse_rho(size, cx, cy, a, b, angle)
        inside = rho < 1.0
        echo = np.where(inside, rng.uniform(0.3, 0.8) * (1 + 0.15 * _smooth_noise(rng, size, 20, 1.0)),
                        echo)
        capsule = np.abs(rho - 1.0) < rng.uniform(1.2, 2.5) * px / min(a, b)
        echo = np.where(capsule, rng.uniform(1.1, 1.7), echo)
        if rng.random() < 0.4:  # a kidney-like bright central sinus
            sinus = rho < rng.uniform(0.3, 0.5)
            echo = np.where(sinus, rng.uniform(0.9, 1.3), echo)
        organs.append((cx, cy, a, b, angle, rho))

    enhancement = np.ones_like(echo)
    anechoic = np.zeros(echo.shape, bool)
    # Look-alikes, in positives and negatives alike.
    for _ in range(int(rng.integers(0, 3))):  # vessels: tubes with echogenic walls
        cx, cy = rng.uniform(0.2, 0.8), rng.uniform(0.25, 0.9)
        length, width = rng.uniform(0.15, 0.5), rng.uniform(0.012, 0.035)
        if rng.random() < 0.35:
            length = width * rng.uniform(1.0, 1.4)  # seen in cross-section
        rho = _ellipse_rho(size, cx, cy, length / 2, width, rng.uniform(-1.2, 1.2))
        wall = (rho >= 1.0) & (rho < 1.0 + 3.5 * px / width)
        echo = np.where(wall, rng.uniform(1.3, 1.8), echo)
        anechoic |= rho < 1.0
    for _ in range(int(rng.integers(0, 2))):  # gallbladder: smooth oval, enhancement below
        cx, cy = _inside_an_organ(rng, organs)
        a, b = rng.uniform(0.05, 0.10), rng.uniform(0.03, 0.06)
        rho = _ellipse_rho(size, cx, cy, a, b, rng.uniform(-0.8, 0.8))
        anechoic |= rho < 1.0
        echo = np.where(np.abs(rho - 1.0) < 3.0 * px / b, rng.uniform(1.1, 1.5), echo)
        enhancement *= _posterior_band(depth, theta, cx, cy, a, 1.0 + rng.uniform(0.5, 0.9))
    for _ in range(int(rng.integers(0, 3))):  # simple cysts: round, thin wall, enhancement
        cx, cy = _inside_an_organ(rng, organs)
        r = rng.uniform(0.015, 0.05)
        rho = _ellipse_rho(size, cx, cy, r, r * rng.uniform(0.85, 1.1), 0.0)
        anechoic |= rho < 1.0
        echo = np.where(np.abs(rho - 1.0) < 2.5 * px / r, rng.uniform(1.1, 1.5), echo)
        enhancement *= _posterior_band(depth, theta, cx, cy, r, 1.0 + rng.uniform(0.4, 0.8))
    shadow = np.ones_like(echo)
    for _ in range(int(rng.integers(0, 2)) + int(rng.random() < 0.2)):  # rib or gas shadows
        t0 = rng.uniform(-0.55, 0.45)
        span = rng.uniform(0.06, 0.18)
        d0 = rng.uniform(0.05, 0.6)
        beam = (theta >= t0) & (theta <= t0 + span)
        echo = np.where(beam & (np.abs(depth - d0) < rng.uniform(0.01, 0.025)),
                        rng.uniform(1.4, 2.0), echo)
        shadow = np.where(beam & (depth > d0 + 0.02), rng.uniform(0.04, 0.2), shadow)

    fluid_region = np.zeros(echo.shape, bool)
    if fluid:
        for _ in range(1 if rng.random() < 0.8 else 2):
            fluid_region |= _fluid_pocket(rng, size, organs)
    # Fluid shows posterior enhancement only weakly: the phantom gives it some,
    # so that enhancement does not separate fluid from cysts on its own.
    echo = np.where(anechoic, rng.uniform(0.0, 0.03), echo)
    echo = np.where(fluid_region, rng.uniform(0.0, 0.06), echo)

    gain = rng.uniform(0.6, 1.5)
    attenuation = np.exp(-rng.uniform(0.5, 2.5) * depth)
    tgc = 1.0 + rng.uniform(0.0, 1.5) * np.clip(depth, 0, 1)
    amplitude = echo * enhancement * shadow * attenuation * tgc * gain

    speckle = _speckle(speckle_rng or rng, size)
    noise_floor = rng.uniform(0.003, 0.02)
    noise = np.abs((speckle_rng or rng).standard_normal(echo.shape))
    signal = amplitude * speckle + noise_floor * noise
    db = 20 * np.log10(np.maximum(signal, 1e-4))
    # Log compression as a scanner displays it: tissue mid-grey, fluid black.
    dynamic_range = rng.uniform(40, 60)
    image = np.clip((db + rng.uniform(0.45, 0.65) * dynamic_range) / dynamic_range, 0, 1)
    blur = rng.uniform(0, 1.0) * size / 256  # the probe's and the codec's blur
    if blur > 0.2:
        image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), blur)
    image = np.where(fan, image, 0.0)
    visible = fluid_region & fan & (shadow > 0.5)
    if visible.sum() < MIN_FLUID_PX_256 * (size / 256) ** 2:
        visible[:] = False
    return UltrasoundCase((image * 255).astype(np.uint8), visible)


def _inside_an_organ(rng: np.random.Generator, organs: list) -> tuple[float, float]:
    """A centre inside an organ's parenchyma (cysts and the gallbladder live there)."""
    if not organs:
        return rng.uniform(0.25, 0.75), rng.uniform(0.3, 0.85)
    cx, cy, a, b, angle, _ = organs[int(rng.integers(len(organs)))]
    r, t = rng.uniform(0, 0.55), rng.uniform(0, 2 * np.pi)
    u, v = r * a * np.cos(t), r * b * np.sin(t)
    return (cx + u * np.cos(angle) - v * np.sin(angle),
            cy + u * np.sin(angle) + v * np.cos(angle))


def _posterior_band(depth: np.ndarray, theta: np.ndarray, cx: float, cy: float, r: float,
                    gain: float) -> np.ndarray:
    """Brighter tissue behind a fluid-filled structure, along the beam."""
    apex_y = -0.30
    t_c = np.arctan2(cx - 0.5, cy - apex_y)
    d_c = (np.hypot(cx - 0.5, cy - apex_y) - 0.36) / 0.90
    half = np.arctan2(r, np.hypot(cx - 0.5, cy - apex_y)) * 0.8
    band = (np.abs(theta - t_c) < half) & (depth > d_c)
    return np.where(band, gain, 1.0).astype(np.float32)


def _fluid_pocket(rng: np.random.Generator, size: int, organs: list) -> np.ndarray:
    """Free fluid: an anechoic crescent with tapered, angular ends against an organ
    (Morison's pouch), or an angular pocket between structures."""
    if organs and rng.random() < 0.75:
        cx, cy, a, b, angle, rho = organs[int(rng.integers(len(organs)))]
        u, v = _ellipse_uv(size, cx, cy, a, b, angle)
        phi = np.arctan2(v, u)
        span = rng.uniform(0.5, 2.0)
        width = rng.uniform(0.15, 0.5)  # in units of the organ's radius
        bump = _angle_window(phi, rng.uniform(0, 2 * np.pi), span)
        bump = bump ** rng.uniform(0.6, 1.2)
        jag = 1 + 0.25 * _smooth_noise(rng, size, 8, 0.8)
        return (rho >= 1.0) & (rho < 1.0 + width * bump * jag)
    # An angular pocket: a triangle-ish polygon against an organ, never inside one.
    radius = rng.uniform(0.05, 0.12)
    if organs:
        cx, cy, a, b, angle, rho = organs[int(rng.integers(len(organs)))]
        t = rng.uniform(0, 2 * np.pi)
        u, v = (a + 0.6 * radius) * np.cos(t), (b + 0.6 * radius) * np.sin(t)
        cx, cy = (cx + u * np.cos(angle) - v * np.sin(angle),
                  cy + u * np.sin(angle) + v * np.cos(angle))
    else:
        cx, cy, rho = rng.uniform(0.25, 0.75), rng.uniform(0.3, 0.85), None
    n = int(rng.integers(3, 6))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(0.5, 1.3, n)
    pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1) * size
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [pts.astype(np.int32)], 1)
    pocket = mask.astype(bool)
    return pocket if rho is None else pocket & (rho >= 1.0)


def _speckle(rng: np.random.Generator, size: int) -> np.ndarray:
    """Fully developed speckle: the magnitude of a band-limited complex field,
    wider across the beam than along it, normalised to mean 1."""
    re = rng.standard_normal((size, size)).astype(np.float32)
    im = rng.standard_normal((size, size)).astype(np.float32)
    sx, sy = 1.2 * size / 256, 0.6 * size / 256
    re = cv2.GaussianBlur(re, (0, 0), sigmaX=sx, sigmaY=sy)
    im = cv2.GaussianBlur(im, (0, 0), sigmaX=sx, sigmaY=sy)
    mag = np.hypot(re, im)
    return mag / (mag.mean() + 1e-6)
