"""Server configuration: explicit, immutable, read once from the command line or
the environment (GOLDENHOUR_* variables)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path


def _env_bool(environ: dict[str, str], name: str, default: bool) -> bool:
    value = environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8443
    #: Serve HTTPS/WSS with a self-signed certificate made on first run.
    tls: bool = True
    #: Where embedded state lives (TLS certificate, later the SQLite store).
    data_dir: Path = Path("var")
    #: ICE servers handed to every peer connection, ours and the clients'.
    #: Empty by default: aiortc would otherwise add a public STUN server.
    ice_servers: list[dict] = field(default_factory=list)
    #: Offer 127.0.0.1 as an ICE host candidate (local demos, tests).
    ice_loopback: bool = True
    #: Offer nothing but 127.0.0.1 (tests: no packet leaves the machine).
    ice_loopback_only: bool = False
    #: May a crew create a room by joining it with `create: true`?
    crew_may_create_rooms: bool = True
    #: A room that always exists (the demo), or None.
    demo_room: str | None = "demo"
    #: Reject joins without a token (the token check itself is a later issue).
    require_token: bool = False
    #: Outbound signaling messages queued per connection before it is dropped
    #: as too slow to read them.
    max_outbound_queue: int = 256
    #: Seconds a client has to answer a subscribe offer before its session is
    #: closed (it would otherwise never receive another track).
    subscribe_answer_timeout_s: float = 10.0
    #: Run the event loop's thread under SCHED_FIFO at this priority (1-99;
    #: 0: normal scheduling). server/scheduling.py says why and what it costs.
    #: 0 here (a server inside another program, such as the tests, must not
    #: change its host's thread); `goldenhour serve` asks for
    #: SERVE_REALTIME_PRIORITY unless told otherwise.
    realtime_priority: int = 0
    #: Whether someone asked for `realtime_priority` (flag, environment,
    #: caller) rather than taking `goldenhour serve`'s default: a refusal of
    #: what was asked for is a warning, of the default only a note.
    realtime_priority_asked: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.realtime_priority <= 99:
            raise ValueError(f"realtime_priority must be 0 (off) or 1-99, not {self.realtime_priority}")

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> Config:
        env = dict(os.environ if environ is None else environ)
        values: dict[str, object] = {}
        if "GOLDENHOUR_HOST" in env:
            values["host"] = env["GOLDENHOUR_HOST"]
        if "GOLDENHOUR_PORT" in env:
            values["port"] = int(env["GOLDENHOUR_PORT"])
        values["tls"] = _env_bool(env, "GOLDENHOUR_TLS", cls.tls)
        if "GOLDENHOUR_DATA_DIR" in env:
            values["data_dir"] = Path(env["GOLDENHOUR_DATA_DIR"])
        if "GOLDENHOUR_ICE_SERVERS" in env:
            values["ice_servers"] = json.loads(env["GOLDENHOUR_ICE_SERVERS"])
        values["ice_loopback"] = _env_bool(env, "GOLDENHOUR_ICE_LOOPBACK", cls.ice_loopback)
        values["ice_loopback_only"] = _env_bool(env, "GOLDENHOUR_ICE_LOOPBACK_ONLY",
                                                cls.ice_loopback_only)
        if "GOLDENHOUR_DEMO_ROOM" in env:
            values["demo_room"] = env["GOLDENHOUR_DEMO_ROOM"] or None
        values["require_token"] = _env_bool(env, "GOLDENHOUR_REQUIRE_TOKEN", cls.require_token)
        if "GOLDENHOUR_REALTIME_PRIORITY" in env:
            raw = env["GOLDENHOUR_REALTIME_PRIORITY"]
            try:
                values["realtime_priority"] = int(raw)
            except ValueError:
                raise ValueError(f"GOLDENHOUR_REALTIME_PRIORITY must be a whole number "
                                 f"(0 off, 1-99), not {raw!r}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
