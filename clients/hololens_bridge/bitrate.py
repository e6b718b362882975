"""The headset's video bitrate, following the server's bandwidth estimate (REMB).

The server tells the crew what the uplink and the slowest expert can take
(docs/sfu.md, "Bandwidth feedback"). A browser's or aiortc's encoder just
sets its target from it. hl2ss encodes at the bitrate its PV stream was
opened with, and the only way to change it is to open the stream again: a
gap of a few frames and a new keyframe. So the bridge changes it seldom and
in steps, along a ladder from the configured bitrate down:

* one or more rungs down once every estimate for `down_after_s` has been
  below what the headset is actually sending (an uplink that cannot carry
  the stream queues it, then loses it); an estimate above what it sends,
  however far below the configured bitrate, is no reason to move, since an
  encoder that undershoots (a still scene) sends less than it may;
* one rung up once every estimate for `up_after_s` has reached the next
  rung, and not sooner than `up_after_s` after the last change.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BitrateLadder:
    """Which bitrate the headset's stream should be opened with."""

    max_bps: int
    min_bps: int = 300_000
    #: Each rung is this fraction of the one above.
    ratio: float = 0.7
    #: How long every estimate must be below what is being sent before a step down.
    down_after_s: float = 1.0
    #: How long every estimate must reach the next rung before a step up.
    up_after_s: float = 10.0
    #: A step down needs the estimate below this share of what is sent.
    congested_share: float = 0.9
    rungs: list[int] = field(init=False)
    current_bps: int = field(init=False)

    def __post_init__(self) -> None:
        if not 0 < self.min_bps <= self.max_bps:
            raise ValueError(f"a bitrate ladder needs 0 < min_bps <= max_bps, "
                             f"not {self.min_bps} and {self.max_bps}")
        if not 0 < self.ratio < 1:
            raise ValueError(f"a bitrate ladder's ratio is between 0 and 1, not {self.ratio}")
        rungs = [self.max_bps]
        while rungs[-1] * self.ratio > self.min_bps:
            rungs.append(int(rungs[-1] * self.ratio))
        if rungs[-1] != self.min_bps:
            rungs.append(self.min_bps)
        self.rungs = rungs
        self.current_bps = self.max_bps
        self._below_since: float | None = None
        self._above_since: float | None = None
        self._changed_at = float("-inf")

    def observe(self, estimate_bps: int, sending_bps: float, now_s: float) -> int | None:
        """An estimate from the server, with what the headset's stream has
        been sending (bits/s, recently); returns the bitrate to reopen the
        stream with, or None to keep it."""
        if estimate_bps < self.congested_share * sending_bps:
            self._below_since = now_s if self._below_since is None else self._below_since
        else:
            self._below_since = None
        up = self._rung_above()
        if up is not None and estimate_bps >= up:
            self._above_since = now_s if self._above_since is None else self._above_since
        else:
            self._above_since = None

        if (self._below_since is not None and now_s - self._below_since >= self.down_after_s
                and self.current_bps > self.min_bps):
            # The highest rung the estimate can carry, at least one down.
            fitting = next((r for r in self.rungs if r <= estimate_bps), self.min_bps)
            return self._change(min(fitting, self._rung_below()), now_s)
        if (up is not None and self._above_since is not None
                and now_s - self._above_since >= self.up_after_s
                and now_s - self._changed_at >= self.up_after_s):
            return self._change(up, now_s)
        return None

    def _change(self, bitrate_bps: int, now_s: float) -> int:
        self.current_bps = bitrate_bps
        self._changed_at = now_s
        self._below_since = self._above_since = None
        return bitrate_bps

    def _rung_above(self) -> int | None:
        i = self.rungs.index(self.current_bps)
        return self.rungs[i - 1] if i > 0 else None

    def _rung_below(self) -> int:
        i = self.rungs.index(self.current_bps)
        return self.rungs[min(i + 1, len(self.rungs) - 1)]
