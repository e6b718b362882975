"""Procedural surface colours of the synthetic ambulance, evaluated at 3D points.

The renderer colours each pixel from the part it hit and the hit's world position,
so large flat walls need no dense mesh to carry a pattern. The patterns give video
codecs and feature trackers something to hold on to: tile grout, cabinet doors with
coloured labels and "text", shirt stripes, trouser checks, mottled skin and a face.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from vision.synthetic import layout

#: Materials; each part of the scene has one.
MATERIAL_OF_PART: dict[str, str] = {
    "floor": "floor", "wall": "wall", "ceiling": "ceiling", "cabinet": "cabinet",
    "seat": "seat", "stretcher": "metal", "mattress": "mattress", "equipment": "equipment",
    "head": "head", "neck": "skin", "torso": "torso",
    "left_upper_arm": "sleeve", "right_upper_arm": "sleeve",
    "left_forearm": "skin", "right_forearm": "skin", "left_hand": "skin", "right_hand": "skin",
    "left_thigh": "trousers", "right_thigh": "trousers",
    "left_lower_leg": "trousers", "right_lower_leg": "trousers",
    "left_foot": "shoe", "right_foot": "shoe",
}

_SKIN_TONES = np.array([
    [0.90, 0.72, 0.60], [0.80, 0.60, 0.47], [0.62, 0.44, 0.32], [0.45, 0.31, 0.23],
    [0.93, 0.78, 0.68],
])
_SHIRT_COLOURS = np.array([
    [0.15, 0.35, 0.70], [0.75, 0.20, 0.18], [0.20, 0.55, 0.30], [0.85, 0.65, 0.15],
    [0.45, 0.25, 0.55],
])
_LABEL_COLOURS = np.array([
    [0.85, 0.15, 0.15], [0.15, 0.35, 0.85], [0.15, 0.65, 0.25], [0.95, 0.80, 0.10],
    [0.95, 0.50, 0.10], [0.55, 0.20, 0.65], [0.10, 0.60, 0.65],
], dtype=np.float32)


class Palette:
    """Seed-dependent colours and noise salts of one scene."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng([seed, 0x5EED])
        self.salt = int(rng.integers(1, 2**31))
        self.skin = _SKIN_TONES[rng.integers(len(_SKIN_TONES))]
        shirt = rng.choice(len(_SHIRT_COLOURS), size=2, replace=False)
        self.shirt_a = _SHIRT_COLOURS[shirt[0]]
        self.shirt_b = 0.5 * _SHIRT_COLOURS[shirt[1]] + 0.5
        self.trousers_a = np.array([0.12, 0.16, 0.30]) * rng.uniform(0.8, 1.2)
        self.trousers_b = np.array([0.20, 0.32, 0.22]) * rng.uniform(0.8, 1.2)
        self.hair = np.array([0.16, 0.11, 0.07]) * rng.uniform(0.5, 1.8)


@lru_cache(maxsize=16)
def palette(seed: int) -> Palette:
    return Palette(seed)


def albedo_rgb(material: str, points_m: np.ndarray, seed: int) -> np.ndarray:
    """(N, 3) float32 colours in [0, 1] of a material at world points (N, 3)."""
    p = np.asarray(points_m, dtype=np.float32)
    out = _MATERIALS[material](p, palette(seed))
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


# --- noise ---------------------------------------------------------------------

def _hash01(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray, salt: int) -> np.ndarray:
    """A float32 in [0, 1) per integer lattice cell (a lowbias32-style integer hash)."""
    h = _as_u32(ix) * np.uint32(0x8DA6B343)
    h ^= _as_u32(iy) * np.uint32(0xD8163841)
    h ^= _as_u32(iz) * np.uint32(0xCB1AB31F)
    h ^= np.uint32(salt)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x7FEB352D)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x846CA68B)
    h ^= h >> np.uint32(16)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _as_u32(i: np.ndarray) -> np.ndarray:
    """Integer cell indices as uint32 (two's complement wrap: only the bits matter)."""
    if i.dtype != np.int32:
        i = i.astype(np.int32)
    return i.view(np.uint32)


def _cells(p: np.ndarray, cell_m: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q = np.floor(p / np.float32(cell_m)).astype(np.int32)
    return q[:, 0], q[:, 1], q[:, 2]


def _blocky(p: np.ndarray, cell_m: float, salt: int) -> np.ndarray:
    """Piecewise-constant noise in [0, 1): sharp corners for feature trackers."""
    return _hash01(*_cells(p, cell_m), salt)


def _waves(p: np.ndarray, wavelengths_m: tuple[float, ...], salt: int) -> np.ndarray:
    """Smooth noise in [0, 1]: the mean of plane waves of the given wavelengths in
    pseudo-random directions (much cheaper per point than value noise)."""
    rng = np.random.default_rng(salt)
    out = np.zeros(len(p), np.float32)
    for wavelength in wavelengths_m:
        direction = rng.normal(size=3)
        k = (2.0 * np.pi / wavelength) * direction / np.linalg.norm(direction)
        out += np.sin(p @ k.astype(np.float32) + np.float32(rng.uniform(0, 2 * np.pi)))
    return 0.5 + out * np.float32(0.5 / len(wavelengths_m))


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


def _solid(colour: np.ndarray, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, np.float32), (n, 3)).copy()


# --- materials -------------------------------------------------------------------

def _floor(p: np.ndarray, pal: Palette) -> np.ndarray:
    tile_m = 0.30
    x, z = p[:, 0], p[:, 2]
    zeros = np.zeros(len(p), np.int32)
    tile_x = np.floor(x / tile_m)
    tile_z = np.floor(z / tile_m)
    shade = 0.80 + 0.25 * _hash01(tile_x, zeros, tile_z, pal.salt)
    shade *= 0.92 + 0.16 * _blocky(p, 0.012, pal.salt + 1)
    grout = ((x / tile_m - tile_x) < 0.03) | ((z / tile_m - tile_z) < 0.03)
    shade[grout] = 0.35
    return shade[:, None] * np.float32([0.42, 0.48, 0.46])


def _wall(p: np.ndarray, pal: Palette) -> np.ndarray:
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    # Along-the-wall coordinate: one of x, z is constant on each wall.
    h = x + z
    shade = 0.95 + 0.06 * _blocky(p, 0.05, pal.salt + 2)
    # Panel seams every 0.6 m.
    shade[_frac(h / 0.6) < 0.015] = 0.45
    colour = shade[:, None] * np.float32([0.86, 0.86, 0.82])
    # Decals: a coloured card in some 0.4 m x 0.3 m cells, with lines of "text".
    cell_h, cell_y = h / 0.4, y / 0.3
    fh, fy = _frac(cell_h), _frac(cell_y)
    framed = np.flatnonzero((np.abs(fh - 0.5) < 0.32) & (np.abs(fy - 0.5) < 0.3))
    card = _hash01(np.floor(cell_h[framed]), np.floor(cell_y[framed]),
                   np.zeros(len(framed), np.int32), pal.salt + 3)
    keep = card < 0.3
    rows, card = framed[keep], card[keep]
    label = _LABEL_COLOURS[(card * 1000).astype(np.int64) % len(_LABEL_COLOURS)]
    text = (_frac(y[rows] / 0.025) < 0.45) & (_blocky(p[rows], 0.015, pal.salt + 4) < 0.6)
    label[text] *= 0.35
    colour[rows] = label
    # A red/white chevron band at waist height.
    rows = np.flatnonzero((y > 0.98) & (y < 1.12))
    chevron = _frac((h[rows] + y[rows]) / 0.16) < 0.5
    colour[rows] = np.where(chevron[:, None], np.float32([0.80, 0.12, 0.10]),
                            np.float32([0.95, 0.95, 0.93]))
    # Windows in the rear doors.
    rows = np.flatnonzero((x < layout.INTERIOR_MIN_M[0] + 0.01) & (y > 1.15) & (y < 1.6)
                          & (np.abs(np.abs(z) - 0.5) < 0.36))
    glass = 0.8 + 0.4 * _waves(p[rows], (0.3, 0.17), pal.salt + 5)
    colour[rows] = glass[:, None] * np.float32([0.20, 0.28, 0.38])
    return colour


def _ceiling(p: np.ndarray, pal: Palette) -> np.ndarray:
    x, z = p[:, 0], p[:, 2]
    colour = _solid([0.90, 0.90, 0.88], len(p))
    light = (np.abs(z) < 0.25) & (_frac(x / 1.0) < 0.6)
    colour[light] = (1.0, 1.0, 0.96)
    grid = (_frac(x / 0.5) < 0.01) | (_frac(z / 0.5) < 0.01)
    colour[grid] *= 0.6
    return colour


def _cabinet(p: np.ndarray, pal: Palette) -> np.ndarray:
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    h = x + z
    door_h, door_y = h / 0.30, y / 0.22
    fh, fy = _frac(door_h), _frac(door_y)
    shade = 0.95 + 0.06 * _blocky(p, 0.04, pal.salt + 6)
    colour = shade[:, None] * np.float32([0.78, 0.79, 0.80])
    rows = np.flatnonzero((np.abs(fh - 0.5) < 0.33) & (fy > 0.30) & (fy < 0.62))
    pick = _hash01(np.floor(door_h[rows]), np.floor(door_y[rows]),
                   np.zeros(len(rows), np.int32), pal.salt + 7)
    keep = pick < 0.8
    rows, pick = rows[keep], pick[keep]
    label = _LABEL_COLOURS[(pick * 1000).astype(np.int64) % len(_LABEL_COLOURS)]
    text = (_frac(y[rows] / 0.018) < 0.5) & (_blocky(p[rows], 0.012, pal.salt + 8) < 0.55)
    label[text] = (0.08, 0.08, 0.08)
    colour[rows] = label
    handle = (np.abs(fh - 0.5) < 0.18) & (fy > 0.78) & (fy < 0.85)
    seam = (fh < 0.025) | (fy < 0.03)
    colour[handle | seam] = (0.15, 0.15, 0.17)
    return colour


def _seat(p: np.ndarray, pal: Palette) -> np.ndarray:
    shade = 0.85 + 0.25 * _blocky(p, 0.03, pal.salt + 9)
    seam = (_frac(p[:, 0] / 0.4) < 0.015) | (_frac(p[:, 1] / 0.25) < 0.02)
    shade[seam] *= 0.4
    return shade[:, None] * np.float32([0.12, 0.20, 0.45])


def _metal(p: np.ndarray, pal: Palette) -> np.ndarray:
    shade = 0.75 + 0.3 * _blocky(p, 0.05, pal.salt + 10)
    colour = shade[:, None] * np.float32([0.62, 0.64, 0.67])
    stripe = _frac(p[:, 0] / 0.25) < 0.1
    colour[stripe] = (0.95, 0.75, 0.10)
    return colour


def _mattress(p: np.ndarray, pal: Palette) -> np.ndarray:
    shade = 0.8 + 0.4 * _blocky(p, 0.025, pal.salt + 11)
    colour = shade[:, None] * np.float32([0.10, 0.12, 0.18])
    quilt = (_frac(p[:, 0] / 0.15) < 0.04) | (_frac(p[:, 2] / 0.15) < 0.04)
    colour[quilt] = (0.35, 0.38, 0.45)
    return colour


def _equipment(p: np.ndarray, pal: Palette) -> np.ndarray:
    pick = _blocky(p, 0.5, pal.salt + 12)
    colour = _LABEL_COLOURS[(pick * 1000).astype(np.int64) % len(_LABEL_COLOURS)]
    stripe = _frac(p[:, 1] / 0.06) < 0.3
    colour[stripe] *= 0.3
    return colour


def _skin(p: np.ndarray, pal: Palette) -> np.ndarray:
    # Several crossing waves read as blotches; one or two would read as stripes.
    mottle = 0.86 + 0.14 * _waves(p, (0.037, 0.029, 0.019, 0.013, 0.007), pal.salt + 13)
    colour = mottle[:, None] * pal.skin.astype(np.float32)
    colour[:, 0] += 0.07 * _waves(p, (0.045,), pal.salt + 15)
    return colour


def _head(p: np.ndarray, pal: Palette) -> np.ndarray:
    colour = _skin(p, pal)
    d = p - layout.HEAD_CENTER_M.astype(np.float32)
    dx, dy, dz = d[:, 0], d[:, 1], np.abs(d[:, 2])
    hair = np.flatnonzero((dx > 0.07) | ((dy < 0.02) & (dx > -0.03)))
    strands = 0.75 + 0.5 * _waves(p[hair] * np.float32([1, 1, 8]), (0.02, 0.011), pal.salt + 16)
    colour[hair] = strands[:, None] * pal.hair.astype(np.float32)
    front = dy > 0.05
    eye = front & (((dx - 0.015) / 0.011) ** 2 + ((dz - 0.033) / 0.016) ** 2 < 1.0)
    iris = eye & (((dx - 0.015) / 0.0065) ** 2 + ((dz - 0.033) / 0.0065) ** 2 < 1.0)
    brow = front & (dx > 0.034) & (dx < 0.042) & (dz > 0.014) & (dz < 0.05)
    mouth = front & (dx > -0.064) & (dx < -0.054) & (dz < 0.022)
    colour[eye] = (0.95, 0.95, 0.93)
    colour[iris] = (0.15, 0.22, 0.30)
    colour[brow] = pal.hair
    colour[mouth] = (0.55, 0.20, 0.20)
    return colour


def _shirt(p: np.ndarray, pal: Palette) -> np.ndarray:
    x, z = p[:, 0], p[:, 2]
    stripe = _frac(x / 0.05) < 0.5
    colour = np.where(stripe[:, None], pal.shirt_b, pal.shirt_a).astype(np.float32)
    # Fabric: a fine weave of 4 mm cells and darker pinstripes.
    weave = 0.9 + 0.12 * _blocky(p, 0.004, pal.salt + 17)
    weave[_frac(z / 0.02) < 0.15] *= 0.8
    colour *= weave[:, None]
    # Button placket down the middle, a button every 8 cm.
    placket = np.abs(z) < 0.012
    colour[placket] = pal.shirt_b * 0.9
    button = (np.abs(z) < 0.006) & (np.abs(_frac(x / 0.08) - 0.5) < 0.07)
    colour[button] = (0.95, 0.95, 0.90)
    return colour


def _torso(p: np.ndarray, pal: Palette) -> np.ndarray:
    """Shirt above the belt, trousers below it."""
    x = p[:, 0]
    colour = np.empty((len(p), 3), np.float32)
    shirt = x >= layout.BELT_X_M[1]
    trousers = x < layout.BELT_X_M[0]
    belt = ~(shirt | trousers)
    colour[shirt] = _shirt(p[shirt], pal)
    colour[trousers] = _trousers(p[trousers], pal)
    buckle = np.abs(p[belt, 2]) < 0.03
    colour[belt] = np.where(buckle[:, None], np.float32([0.75, 0.70, 0.45]),
                            np.float32([0.25, 0.15, 0.08]))
    return colour


def _sleeve(p: np.ndarray, pal: Palette) -> np.ndarray:
    sleeve = p[:, 0] > layout.SLEEVE_END_X_M
    colour = np.empty((len(p), 3), np.float32)
    colour[sleeve] = _shirt(p[sleeve], pal)
    colour[~sleeve] = _skin(p[~sleeve], pal)
    return colour


def _trousers(p: np.ndarray, pal: Palette) -> np.ndarray:
    fx = _frac(p[:, 0] / 0.06)
    a = fx < 0.5
    b = _frac((p[:, 1] + p[:, 2]) / 0.06) < 0.5
    colour = np.where((a ^ b)[:, None], pal.trousers_b.astype(np.float32),
                      pal.trousers_a.astype(np.float32))
    colour[a & b] *= 1.5
    colour[np.abs(fx - 0.25) < 0.04] = (0.70, 0.15, 0.12)
    colour *= (0.9 + 0.15 * _blocky(p, 0.005, pal.salt + 18))[:, None]
    return colour


def _shoe(p: np.ndarray, pal: Palette) -> np.ndarray:
    colour = _solid([0.09, 0.09, 0.10], len(p))
    # Laces across the instep, which faces the head (+X) with the toes pointing up.
    instep = (p[:, 0] > layout.LEFT_ANKLE_JOINT_M[0] - 0.005) & (
        np.abs(np.abs(p[:, 2]) - layout.LEFT_ANKLE_JOINT_M[2]) < 0.016)
    lace = instep & (_frac(p[:, 1] / 0.02) < 0.3)
    colour[lace] = (0.85, 0.85, 0.85)
    return colour


_MATERIALS = {
    "floor": _floor, "wall": _wall, "ceiling": _ceiling, "cabinet": _cabinet,
    "seat": _seat, "metal": _metal, "mattress": _mattress, "equipment": _equipment,
    "skin": _skin, "head": _head, "torso": _torso, "sleeve": _sleeve,
    "trousers": _trousers, "shoe": _shoe,
}
MATERIALS: tuple[str, ...] = tuple(_MATERIALS)
