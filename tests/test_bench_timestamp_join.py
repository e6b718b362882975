"""bench/sfu.py joins each subscriber's frames with the publisher's log on the
RTP timestamp. Janus shifts every subscriber's timestamps by a constant of its
own; the benchmark finds it. A wrong constant would move every Janus figure
by a frame interval (33 ms) without a word, so it is checked here."""

from __future__ import annotations

import random
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import sfu  # noqa: E402  (bench/ is not a package)


def _publisher_log(frames: int, first_ts: int) -> dict:
    # A uniform 3000 ticks a frame: every shift by whole frames lines the
    # frames up, and only the latency tells the right one.
    ts = [(first_ts + 3000 * k) % (1 << 32) for k in range(frames)]
    capture = [1000.0 + k / 30 for k in range(frames)]
    return {"rtp_ts": ts, "capture_s": capture}


def _subscriber(sent: dict, shift: int, latency_s: float, missing: set[int]) -> dict:
    ts, complete = [], []
    for k, (t, c) in enumerate(zip(sent["rtp_ts"], sent["capture_s"])):
        ts.append((t + shift) % (1 << 32))
        complete.append(None if k in missing else c + latency_s + random.uniform(0, 0.004))
    return {"rtp_ts": ts, "complete_s": complete, "first_s": complete}


def test_the_publishers_timestamps_are_found_again_across_a_wrap():
    random.seed(7)
    sent = _publisher_log(300, first_ts=(1 << 32) - 3000 * 100)  # wraps a third of the way in
    shift = 123_456_789
    rtp = _subscriber(sent, shift, latency_s=0.003, missing={5, 6, 200})
    undone = sfu._undo_timestamp_offset(rtp, sent)
    assert undone["rtp_ts"] == sent["rtp_ts"]
    assert undone["complete_s"] == rtp["complete_s"]


def test_a_slow_path_is_not_mistaken_for_a_frame_off():
    # 25 ms of latency is under a frame interval: a shift of one frame less
    # would give 58 ms, one more a negative latency.
    random.seed(8)
    sent = _publisher_log(120, first_ts=90_000)
    rtp = _subscriber(sent, shift=-90_000 + 3000, latency_s=0.025, missing=set())
    assert sfu._undo_timestamp_offset(rtp, sent)["rtp_ts"] == sent["rtp_ts"]


def test_frames_that_match_nothing_are_left_as_they_came():
    sent = _publisher_log(60, first_ts=0)
    # Complete long before anything was captured: no shift is plausible.
    rtp = {"rtp_ts": [7, 3007], "complete_s": [10.0, 10.03], "first_s": [10.0, 10.03]}
    assert sfu._undo_timestamp_offset(rtp, sent) is rtp
