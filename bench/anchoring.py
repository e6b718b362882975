"""vision/ benchmark: anchoring, re-projection, map updates and synthetic rendering.

    python bench/anchoring.py            # 200 repetitions per figure
    python bench/anchoring.py --quick    # 30 repetitions

On the synthetic ambulance scene (vision.synthetic), from a paramedic's
viewpoint with the HoloLens-like 1280x720 camera, it times:

- anchoring a 256-point freehand stroke across the patient (resampling to
  3 mm included), and the same anchoring done point by point — one ray cast
  and the per-point arithmetic in a Python loop, the way a first version
  would — as the baseline, as a ratio in the same run;
- re-projecting 10,000 anchored points into another view with the occlusion
  test, and the point-by-point baseline;
- updating one 1,000-triangle mesh block of a map split into ~1k-triangle
  blocks (what `SpatialMap.set_block` costs its caller), and, for context,
  rebuilding the whole map (`compact()`, what a naive map does on every
  update);
- rendering one 1280x720 colour + depth frame;
- refining one frame's pose against the map (`vision.refine.refine_pose`): a
  320x180 depth frame with 1% noise, from a pose 4 mm and 0.3 degrees off.

Prints a table with the issue's targets and writes bench/results/anchoring-<time>.json
and bench/results/anchoring-latest.json. A benchmark, not a test: it never fails on
a missed target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vision.anchoring import Shape, anchor_shape  # noqa: E402
from vision.camera import Intrinsics, look_at, norm_from_px, project, world_rays  # noqa: E402
from vision.refine import refine_pose  # noqa: E402
from vision.reprojection import reproject  # noqa: E402
from vision.spatial_map import SpatialMap, split_into_blocks  # noqa: E402
from vision.synthetic import HOLOLENS_PV_1280x720, ambulance_scene, noisy_depth, render  # noqa: E402
from vision.synthetic.noise import rotation_from_axis_angle  # noqa: E402

RESULTS_DIR = REPO / "bench" / "results"
CAMERA = HOLOLENS_PV_1280x720
#: A depth camera at a quarter of the colour camera's resolution, same optical centre.
DEPTH_CAMERA = Intrinsics(320, 180, CAMERA.fx / 4, CAMERA.fy / 4, (CAMERA.cx + 0.5) / 4 - 0.5,
                          (CAMERA.cy + 0.5) / 4 - 0.5)


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up: first calls pay for allocations and lazy builds
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(ordered),
        "p90_ms": ordered[int(0.9 * (len(ordered) - 1))],
        "max_ms": ordered[-1],
        "n": len(ordered),
    }


def freehand_stroke(rng: np.random.Generator, center_uv: np.ndarray, points: int = 256) -> np.ndarray:
    """A wandering freehand stroke of `points` samples around `center_uv`."""
    steps = rng.normal(0.0, 0.0025, (points, 2))
    steps[:, 0] += 0.0008  # drifts to the right, like a hand drawing across a limb
    uv = center_uv + np.cumsum(steps, axis=0)
    uv -= uv.mean(axis=0) - center_uv
    return np.clip(uv, 0.0, 1.0)


def anchor_point_by_point(uv_norm: np.ndarray, T: np.ndarray, snapshot) -> np.ndarray:
    """Baseline: the same rays, one at a time, with per-point Python arithmetic."""
    out = []
    for uv in uv_norm:
        origin, direction = world_rays(uv[None, :], T, CAMERA)
        hit = snapshot.cast(origin, direction)
        if hit.hit[0]:
            point = origin + direction[0] * hit.t_m[0]
        else:
            point = origin + direction[0] * 0.6
        out.append(point)
    return np.array(out)


def reproject_point_by_point(points: np.ndarray, T: np.ndarray, snapshot) -> int:
    visible = 0
    for p in points:
        result = reproject(p[None, :], T, CAMERA, snapshot)
        visible += int(result.visible[0])
    return visible


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="30 repetitions instead of 200")
    args = parser.parse_args()
    repeats = 30 if args.quick else 200
    rng = np.random.default_rng(7)

    scene = ambulance_scene(0)
    vertices, triangles = scene.vertices_world_m, scene.triangles
    exact = SpatialMap()
    exact.replace(vertices, triangles)
    snapshot = exact.snapshot()
    target = scene.landmarks_world_m["sternum"]
    T_draw = look_at(target + np.array([0.15, 0.65, 0.35]), target)
    T_view = look_at(target + np.array([-0.35, 0.55, 0.45]), target)
    center_px, _ = project(target[None, :], T_draw, CAMERA)
    stroke_uv = freehand_stroke(rng, norm_from_px(center_px, CAMERA)[0])
    shape = Shape.checked("stroke", stroke_uv)

    results: dict[str, dict] = {}
    anchored = anchor_shape(shape, T_draw, CAMERA, snapshot)
    results["stroke_256"] = summary(timed(lambda: anchor_shape(shape, T_draw, CAMERA, snapshot), repeats))
    results["stroke_256"]["anchored_points"] = int(len(anchored.points_world_m))
    resampled_uv = anchored.uv_norm
    results["stroke_256_baseline"] = summary(
        timed(lambda: anchor_point_by_point(resampled_uv, T_draw, snapshot), max(5, repeats // 10))
    )

    # 10,000 anchored points: strokes drawn all over the patient.
    patient_points = []
    while sum(len(p) for p in patient_points) < 10_000:
        uv = freehand_stroke(rng, norm_from_px(center_px, CAMERA)[0] + rng.normal(0, 0.08, 2))
        patient_points.append(anchor_shape(Shape.checked("stroke", uv), T_draw, CAMERA, snapshot).points_world_m)
    points_10k = np.concatenate(patient_points)[:10_000]
    seen = reproject(points_10k, T_view, CAMERA, snapshot)
    results["reproject_10k"] = summary(timed(lambda: reproject(points_10k, T_view, CAMERA, snapshot), repeats))
    results["reproject_10k"]["visible"] = int(seen.visible.sum())
    results["reproject_10k"]["occluded"] = int(seen.occluded.sum())
    sample = points_10k[:500]
    per_point = summary(timed(lambda: reproject_point_by_point(sample, T_view, snapshot), 3))
    results["reproject_10k_baseline"] = {
        k: (v * len(points_10k) / len(sample) if k.endswith("_ms") else v) for k, v in per_point.items()
    }
    results["reproject_10k_baseline"]["extrapolated_from_points"] = len(sample)

    blocks = split_into_blocks(vertices, triangles)
    blocked = SpatialMap()
    for block_id, v, t in blocks:
        blocked.set_block(block_id, v, t)
    blocked.compact()
    updates = [blocks[int(i)] for i in rng.integers(0, len(blocks), repeats + 1)]
    jitter = iter(updates * 2)

    def update_one_block():
        block_id, v, t = next(jitter)
        blocked.set_block(block_id, v + rng.normal(0, 1e-4, v.shape), t)

    results["block_update_1k"] = summary(timed(update_one_block, repeats))
    results["block_update_1k"]["map_triangles"] = int(len(triangles))
    results["block_update_1k"]["blocks"] = len(blocks)
    results["full_rebuild"] = summary(timed(blocked.compact, max(5, repeats // 20)))

    results["render_1280x720"] = summary(
        timed(lambda: render(scene, T_draw, CAMERA), max(5, repeats // 10))
    )

    depth_m = noisy_depth(render(scene, T_draw, DEPTH_CAMERA, color=False).depth_m, 0.01, rng)
    T_tracker = T_draw.copy()
    T_tracker[:3, :3] = T_draw[:3, :3] @ rotation_from_axis_angle(np.radians([0.2, -0.2, 0.1]))
    T_tracker[:3, 3] += [0.003, -0.002, 0.002]
    refinement = refine_pose(T_tracker, depth_m, DEPTH_CAMERA, snapshot)
    results["refine_pose"] = summary(
        timed(lambda: refine_pose(T_tracker, depth_m, DEPTH_CAMERA, snapshot), max(5, repeats // 10))
    )
    results["refine_pose"].update(
        refined=refinement.refined, correspondences=refinement.correspondences,
        correction_mm=refinement.correction_m * 1e3, correction_deg=refinement.correction_deg)

    targets = {"stroke_256": 5.0, "reproject_10k": 5.0, "block_update_1k": 20.0}
    baselines = {"stroke_256": "stroke_256_baseline", "reproject_10k": "reproject_10k_baseline",
                 "block_update_1k": "full_rebuild"}
    rows = [
        ("anchor 256-pt stroke", "stroke_256"),
        ("  baseline: point by point", "stroke_256_baseline"),
        ("re-project 10k + occlusion", "reproject_10k"),
        ("  baseline: point by point", "reproject_10k_baseline"),
        ("map block update (1k tris)", "block_update_1k"),
        ("  baseline: full rebuild", "full_rebuild"),
        ("render 1280x720 frame", "render_1280x720"),
        ("refine pose, 320x180 depth", "refine_pose"),
    ]
    print(f"\nvision/ benchmark — {scene.triangles.shape[0]:,} triangle scene, {repeats} repetitions,"
          f" {os.cpu_count()} cores\n")
    print(f"{'':32s}{'median ms':>10s}{'p90 ms':>9s}{'max ms':>9s}{'target':>9s}{'vs base':>9s}")
    for label, key in rows:
        r = results[key]
        target = targets.get(key)
        ratio = ""
        if key in baselines:
            base = results[baselines[key]]["median_ms"]
            r["speedup_vs_baseline"] = base / r["median_ms"]
            ratio = f"{r['speedup_vs_baseline']:7.0f}x"
        goal = ""
        if target is not None:
            r["target_ms"] = target
            r["meets_target"] = r["median_ms"] <= target
            goal = f"{'≤' if r['meets_target'] else '>'}{target:g}"
        print(f"{label:32s}{r['median_ms']:10.2f}{r['p90_ms']:9.2f}{r['max_ms']:9.2f}{goal:>9s}{ratio:>9s}")
    print("\ntargets apply to the median; 'vs base' is the baseline's median over this one's.")

    report = {
        "benchmark": "anchoring",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "scene_triangles": int(len(triangles)),
        "results": results,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (f"anchoring-{stamp}.json", "anchoring-latest.json"):
        (RESULTS_DIR / name).write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS_DIR / f'anchoring-{stamp}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
