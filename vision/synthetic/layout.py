"""Where everything is in the synthetic ambulance, in world metres (+Y up).

The world origin is on the floor, at the centre of the patient compartment.
+X points to the front (the cab bulkhead), -X to the rear doors; the compartment
is 3.6 m long (X), 2.2 m wide (Z) and 1.9 m high (Y).

The stretcher stands in the middle (Z = 0) along X. Its mattress top is at
Y = MATTRESS_TOP_Y_M. The patient lies supine on it along the world X axis, head
towards +X (the cab), feet towards -X (the rear doors), face up (+Y). With the
head at +X and the face at +Y, the patient's LEFT side is +Z and the RIGHT side
is -Z (anatomical left = posterior x superior = (-Y) x (+X) = +Z).

Around the stretcher: a squad bench and tall cabinet along the +Z wall, a counter
along the -Z wall near the head end, overhead cabinets along both walls, and a
captain's seat behind the patient's head. The geometry does not depend on the
scene's seed (only the appearance and a little equipment do), so these numbers
hold for every scene.
"""

from __future__ import annotations

import numpy as np

INTERIOR_MIN_M = np.array([-1.8, 0.0, -1.1])
INTERIOR_MAX_M = np.array([1.8, 1.9, 1.1])

MATTRESS_TOP_Y_M = 0.70
_Y0 = MATTRESS_TOP_Y_M

#: Furniture as axis-aligned boxes (name of the part, min corner, max corner).
_Corner = tuple[float, float, float]
FURNITURE_BOXES_M: tuple[tuple[str, _Corner, _Corner], ...] = (
    # stretcher: floor mount, two legs, deck, lowered side rails, mattress
    ("stretcher", (-0.90, 0.00, -0.32), (0.80, 0.10, 0.32)),
    ("stretcher", (-0.82, 0.10, -0.26), (-0.78, 0.56, 0.26)),
    ("stretcher", (0.68, 0.10, -0.26), (0.72, 0.56, 0.26)),
    ("stretcher", (-1.00, 0.56, -0.31), (0.96, 0.62, 0.31)),
    ("stretcher", (-0.95, 0.58, 0.31), (0.90, 0.64, 0.34)),
    ("stretcher", (-0.95, 0.58, -0.34), (0.90, 0.64, -0.31)),
    ("mattress", (-1.02, 0.62, -0.30), (0.98, _Y0, 0.30)),
    # +Z wall: squad bench with backrest, overhead cabinets, tall cabinet at the front
    ("seat", (-1.55, 0.00, 0.62), (0.65, 0.45, 1.10)),
    ("seat", (-1.55, 0.45, 1.00), (0.65, 1.00, 1.10)),
    ("cabinet", (-1.60, 1.50, 0.78), (1.30, 1.90, 1.10)),
    ("cabinet", (1.30, 0.00, 0.55), (1.80, 1.90, 1.10)),
    # -Z wall: counter (action wall) near the head end, overhead cabinets
    ("cabinet", (0.55, 0.00, -1.10), (1.80, 0.95, -0.75)),
    ("cabinet", (-1.60, 1.45, -1.10), (1.60, 1.90, -0.78)),
    # captain's seat behind the patient's head
    ("seat", (1.32, 0.00, -0.25), (1.72, 0.48, 0.25)),
    ("seat", (1.64, 0.48, -0.25), (1.76, 1.15, 0.25)),
)

# --- the patient (supine on the mattress, head at +X, patient's left at +Z) ----
# Joint centres; each limb is a tapered capsule between two joints.

HEAD_CENTER_M = np.array([0.80, _Y0 + 0.100, 0.0])
#: Half-axes of the head ellipsoid: crown-chin (X), back-face (Y), ear-ear (Z).
HEAD_HALF_AXES_M = (0.115, 0.100, 0.080)
NOSE_CENTER_M = np.array([0.785, _Y0 + 0.190, 0.0])
NOSE_HALF_AXES_M = (0.028, 0.022, 0.014)

NECK_START_M = np.array([0.60, _Y0 + 0.085, 0.0])
NECK_END_M = np.array([0.72, _Y0 + 0.095, 0.0])

#: Torso: cross-sections (X station, half-thickness in Y, half-width in Z), hip to shoulder.
TORSO_AXIS_Y_M = _Y0 + 0.105
TORSO_STATIONS_X_M = np.array([0.00, 0.12, 0.26, 0.42, 0.52, 0.60])
TORSO_HALF_THICKNESS_M = np.array([0.100, 0.095, 0.095, 0.110, 0.110, 0.085])
TORSO_HALF_WIDTH_M = np.array([0.170, 0.160, 0.145, 0.160, 0.175, 0.185])

#: Joint centres of the patient's LEFT side; the right side mirrors Z.
LEFT_SHOULDER_JOINT_M = np.array([0.55, _Y0 + 0.085, 0.195])
LEFT_ELBOW_JOINT_M = np.array([0.27, _Y0 + 0.042, 0.225])
LEFT_WRIST_JOINT_M = np.array([0.005, _Y0 + 0.028, 0.240])
LEFT_HIP_JOINT_M = np.array([0.02, _Y0 + 0.085, 0.095])
LEFT_KNEE_JOINT_M = np.array([-0.43, _Y0 + 0.058, 0.105])
LEFT_ANKLE_JOINT_M = np.array([-0.80, _Y0 + 0.042, 0.115])

#: Capsule radii (proximal, distal). The forearm is thicker at the elbow than the
#: upper arm and the lower leg at the knee than the thigh, so the elbow and knee
#: landmarks (seen from above) lie on the forearm and lower leg.
UPPER_ARM_RADII_M = (0.047, 0.038)
FOREARM_RADII_M = (0.042, 0.028)
THIGH_RADII_M = (0.085, 0.055)
LOWER_LEG_RADII_M = (0.058, 0.036)

#: The belt (X from, to): shirt above it (towards the head), trousers below.
BELT_X_M = (0.10, 0.135)
#: Where the T-shirt's sleeve ends on the upper arm (skin below, towards the elbow).
SLEEVE_END_X_M = 0.42


def mirror_z(point_m: np.ndarray) -> np.ndarray:
    """The patient's right-side counterpart of a left-side point."""
    return np.asarray(point_m, dtype=np.float64) * np.array([1.0, 1.0, -1.0])
