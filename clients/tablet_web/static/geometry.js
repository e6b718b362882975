// Camera geometry for the console, in docs/geometry.md's conventions and
// matching vision/camera.py (tests compare the two on the same poses):
// world right-handed +Y up (metres); camera frame OpenCV's (x right, y down,
// z forward); a pose is T_world_camera, 16 numbers row-major; pixels have
// their centres at integers; normalised coordinates run 0..1 corner to corner.

// Invert a rigid row-major 4x4 (rotation transposed, translation rotated back).
export function invertPose(T) {
  const r = [T[0], T[1], T[2], T[4], T[5], T[6], T[8], T[9], T[10]];
  const t = [T[3], T[7], T[11]];
  const rt = [r[0], r[3], r[6], r[1], r[4], r[7], r[2], r[5], r[8]];
  return [
    rt[0], rt[1], rt[2], -(rt[0] * t[0] + rt[1] * t[1] + rt[2] * t[2]),
    rt[3], rt[4], rt[5], -(rt[3] * t[0] + rt[4] * t[1] + rt[5] * t[2]),
    rt[6], rt[7], rt[8], -(rt[6] * t[0] + rt[7] * t[1] + rt[8] * t[2]),
    0, 0, 0, 1,
  ];
}

// Project world points ([[x, y, z], ...]) into a camera.
// Returns [{u, v, depth, inFront}] with u, v in pixels (NaN behind the camera).
export function projectPoints(pointsWorld, T_world_camera, intrinsics) {
  const M = invertPose(T_world_camera);
  const { fx, fy, cx, cy } = intrinsics;
  const d = intrinsics.distortion || [];
  const [k1, k2, p1, p2] = [d[0] || 0, d[1] || 0, d[2] || 0, d[3] || 0];
  const k3 = d[4] || 0;
  const distorted = d.some((c) => c !== 0);
  return pointsWorld.map(([X, Y, Z]) => {
    const xc = M[0] * X + M[1] * Y + M[2] * Z + M[3];
    const yc = M[4] * X + M[5] * Y + M[6] * Z + M[7];
    const zc = M[8] * X + M[9] * Y + M[10] * Z + M[11];
    if (!(zc > 1e-6)) return { u: NaN, v: NaN, depth: zc, inFront: false };
    let x = xc / zc;
    let y = yc / zc;
    if (distorted) {
      const r2 = x * x + y * y;
      const radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3));
      const xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x);
      const yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y;
      x = xd;
      y = yd;
    }
    return { u: x * fx + cx, v: y * fy + cy, depth: zc, inFront: true };
  });
}

// Pixels of an encoded frame -> normalised 0..1 (corner to corner), and back.
export const normFromPx = (u, v, intrinsics) => [(u + 0.5) / intrinsics.width, (v + 0.5) / intrinsics.height];
export const pxFromNorm = (un, vn, intrinsics) => [un * intrinsics.width - 0.5, vn * intrinsics.height - 0.5];

// The part of a <video> element that shows the picture (object-fit: contain):
// {x, y, width, height} in CSS pixels relative to the element. `size` is the
// element's box ({width, height}) when the caller knows it (reading
// clientWidth after a style change forces a layout).
export function contentRect(video, size = null) {
  const vw = video.videoWidth || 1;
  const vh = video.videoHeight || 1;
  const ew = size ? size.width : video.clientWidth;
  const eh = size ? size.height : video.clientHeight;
  const scale = Math.min(ew / vw, eh / vh);
  const width = vw * scale;
  const height = vh * scale;
  return { x: (ew - width) / 2, y: (eh - height) / 2, width, height };
}
