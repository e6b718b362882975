"""A subscriber in its own process, so a test can kill it without any goodbye.

Usage: subscriber_process.py WS_URL. Prints `DECODED <frame_id>` per frame.
"""

import asyncio
import sys

from clients.sdk import framecode
from clients.sdk.client import GoldenHourClient
from server.sfu import aiortc_seams


async def main(url: str) -> None:
    aiortc_seams.use_loopback_ice(True, only=True)
    client = GoldenHourClient(url, "demo", "expert", "doomed")
    await client.connect()
    remote = await client.wait_for_track("video")
    while True:
        frame = await remote.track.recv()
        code = framecode.read(frame.to_ndarray(format="gray"))
        print(f"DECODED {code.frame_id if code else -1}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
