"""Synthetic ground truth for vision/: an ambulance with a patient on the stretcher,
a CPU renderer (colour, depth, triangle and part ids), paramedic head trajectories,
and pose/depth noise. Where things are: vision/synthetic/layout.py."""

from vision.synthetic.headset import HOLOLENS_PV_1280x720
from vision.synthetic.noise import noisy_depth, perturb_pose
from vision.synthetic.render import Rendering, render
from vision.synthetic.scene import (
    FOREARM_SEGMENTS,
    LANDMARK_PARTS,
    PART_NAMES,
    PATIENT_PARTS,
    SyntheticScene,
    ambulance_scene,
)
from vision.synthetic.trajectory import Posed, View, paramedic_trajectory, random_views

__all__ = [
    "FOREARM_SEGMENTS",
    "LANDMARK_PARTS",
    "PART_NAMES",
    "PATIENT_PARTS",
    "HOLOLENS_PV_1280x720",
    "Posed",
    "Rendering",
    "SyntheticScene",
    "View",
    "ambulance_scene",
    "noisy_depth",
    "paramedic_trajectory",
    "perturb_pose",
    "random_views",
    "render",
]
