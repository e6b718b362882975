"""bench/sfu.py joins each subscriber's frames with the publisher's log on the
RTP timestamp. Janus shifts every subscriber's timestamps by a constant of its
own; the benchmark finds it from the decoding subscriber's pixels and lines
the others up with that one. A shift one frame off would move every Janus
figure by a frame interval (33 ms) without a word, so it is checked here."""

from __future__ import annotations

import random
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import sfu  # noqa: E402  (bench/ is not a package)

FRAMES = 300


def _sent(first_ts: int) -> dict:
    # A uniform 3000 ticks a frame, as the benchmark's publisher sends: every
    # shift by whole frames lines the timestamps up; only timing tells.
    return {"frame_id": list(range(FRAMES)),
            "rtp_ts": [(first_ts + 3000 * k) % (1 << 32) for k in range(FRAMES)],
            "capture_s": [1000.0 + k / 30 for k in range(FRAMES)]}


def _subscriber(name: str, sent: dict, shift: int, latency_s: float, decode: bool,
                missing: frozenset[int] = frozenset()) -> dict:
    rtp_ts, complete = [], []
    for k, (t, c) in enumerate(zip(sent["rtp_ts"], sent["capture_s"])):
        rtp_ts.append((t + shift) % (1 << 32))
        complete.append(None if k in missing else c + latency_s + random.uniform(0, 0.004))
    sub = {"name": name, "decode": decode, "rtp": {"rtp_ts": rtp_ts, "complete_s": complete}}
    if decode:
        sub["decoded"] = {"frame_id": sent["frame_id"][10:], "rtp_ts": rtp_ts[10:],
                          "decoded_s": [c + 0.04 for c in sent["capture_s"][10:]]}
    return sub


def _same_frame_id(painted: int, decoded_s: float) -> int:
    return painted


def test_each_subscribers_shift_is_found_even_on_a_path_slower_than_a_frame():
    # 50 ms from capture to complete: one frame less of shift would also give
    # every frame a positive latency (17 ms), so latency alone cannot tell.
    random.seed(7)
    sent = _sent(first_ts=(1 << 32) - 3000 * 100)  # wraps a third of the way in
    shifts = {"sub-00": 123_456_789, "sub-01": -4_000_000, "sub-02": 3000 * 7}
    subscribers = [_subscriber(name, sent, shift, 0.050, decode=name == "sub-00",
                               missing=frozenset({5, 6, 200}) if name == "sub-02" else frozenset())
                   for name, shift in shifts.items()]
    found = sfu._timestamp_offsets(subscribers, sent, _same_frame_id)
    assert found == {name: shift % (1 << 32) for name, shift in shifts.items()}


def test_without_a_readable_decoded_frame_nothing_is_guessed():
    sent = _sent(first_ts=0)
    decoder = _subscriber("sub-00", sent, 1000, 0.01, decode=True)
    decoder["decoded"]["frame_id"] = [None] * len(decoder["decoded"]["frame_id"])
    others = [_subscriber("sub-01", sent, 2000, 0.01, decode=False)]
    assert sfu._timestamp_offsets([decoder, *others], sent, lambda painted, s: painted) == {}


def test_a_subscriber_that_shares_no_time_with_the_decoder_is_left_out():
    random.seed(8)
    sent = _sent(first_ts=90_000)
    decoder = _subscriber("sub-00", sent, 6000, 0.01, decode=True)
    late = _subscriber("sub-01", sent, 9000, 0.01, decode=False)
    late["rtp"]["complete_s"] = [c + 3600 for c in late["rtp"]["complete_s"]]  # an hour apart
    assert sfu._timestamp_offsets([decoder, late], sent, _same_frame_id) == {"sub-00": 6000}


def test_a_few_frames_named_twice_by_a_looping_clip_do_not_hide_the_shift():
    random.seed(9)
    sent = _sent(first_ts=5000)
    decoder = _subscriber("sub-00", sent, 777_000, 0.01, decode=True)
    ids = decoder["decoded"]["frame_id"]
    # Every sixth decoded frame read as one 100 frames away (the clip looped).
    decoder["decoded"]["frame_id"] = [(i + 100) % FRAMES if k % 6 == 0 else i
                                      for k, i in enumerate(ids)]
    assert sfu._timestamp_offsets([decoder], sent, _same_frame_id) == {"sub-00": 777_000}
