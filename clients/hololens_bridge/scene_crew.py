"""A simulated crew inside the synthetic ambulance: its camera renders the scene, each
frame's pose is the pose it was rendered at, and its spatial map (the scene's
mesh, in blocks as a headset sends them) goes to the server on start. Tests
and demos get ground truth for everything the experts draw.
"""

from __future__ import annotations

import asyncio

import numpy as np

from clients.hololens_bridge.scene_camera import SceneCameraTrack
from clients.hololens_bridge.simulated import SimulatedCrew, SyntheticUltrasoundTrack, ToneTrack
from clients.sdk.client import GoldenHourClient
from vision.spatial_map import split_into_blocks

#: Triangles per map block: ~1,000 keeps a block's message near 40 kB (msgpack).
MAP_BLOCK_TRIANGLES = 1000


class SceneCrew(SimulatedCrew):
    """A SimulatedCrew whose camera looks into vision/'s synthetic ambulance."""

    def __init__(self, client: GoldenHourClient, width: int = 640, height: int = 360,
                 fps: int = 30, audio: bool = True, video_codec: str | None = None,
                 camera: SceneCameraTrack | None = None,
                 ultrasound: SyntheticUltrasoundTrack | None = None) -> None:
        super().__init__(client, width=width, height=height, fps=fps, audio=audio,
                         video_codec=video_codec, ultrasound=ultrasound)
        self.camera = camera if camera is not None else SceneCameraTrack(width, height, fps)
        self.audio = ToneTrack() if audio else None
        self.map_blocks_sent = 0
        #: RTP timestamp -> the pose sent for that frame (ground truth for tests).
        self.sent_poses: dict[int, np.ndarray] = {}

    @property
    def scene(self):
        return self.camera.scene

    async def start(self) -> None:
        await super().start()
        await self.send_map()

    async def send_map(self) -> None:
        """Send the scene's mesh as spatial-map blocks, each acknowledged (`map_block_stored`)."""
        scene = self.camera.scene
        for block_id, vertices, triangles in split_into_blocks(scene.vertices_world_m, scene.triangles,
                                                        MAP_BLOCK_TRIANGLES):
            await self.client.request({
                "type": "map_block", "block_id": block_id,
                "vertices": np.round(vertices, 6).reshape(-1).tolist(),
                "triangles": triangles.reshape(-1).tolist()})
            self.map_blocks_sent += 1

    async def walk(self, seed: int = 0, step_s: float = 0.2) -> None:
        """Move the camera like a paramedic working around the patient, forever
        (a pose every `step_s`: each new pose costs a rendering)."""
        from vision.synthetic import paramedic_trajectory

        while True:
            path = paramedic_trajectory(self.camera.scene, duration_s=30.0, fps=1.0 / step_s, seed=seed)
            for posed in path:
                self.camera.set_pose(posed.T_world_camera)
                await asyncio.sleep(step_s)
            seed += 1

    def _pose_message(self, timestamp: int, captured: tuple) -> dict:
        """The pose a frame was rendered at, with the scene camera's intrinsics."""
        frame_id, capture_ms, T_world_camera = captured
        intrinsics = self.camera.intrinsics
        self.sent_poses[timestamp] = T_world_camera
        if len(self.sent_poses) > 600:
            del self.sent_poses[next(iter(self.sent_poses))]
        return {"type": "pose", "rtp_timestamp": timestamp,
                "T_world_camera": [float(v) for v in T_world_camera.reshape(-1)],
                "intrinsics": {"width": intrinsics.width, "height": intrinsics.height,
                               "fx": intrinsics.fx, "fy": intrinsics.fy,
                               "cx": intrinsics.cx, "cy": intrinsics.cy,
                               "distortion": list(intrinsics.distortion)},
                "capture_time_ms": capture_ms, "frame_id": frame_id}
