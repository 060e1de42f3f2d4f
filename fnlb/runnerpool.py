"""The runner-pool interfaces, after fn's ``api/runnerpool/runner_pool.go``.

Here too is the call model every part shares (``CallModel``, ``SYNC``,
``DETACHED``). Implementations live elsewhere: placers in ``fnlb.placers``,
pools in ``fnlb.pools``, the gRPC runner in ``fnlb.transport``, the call in
``fnlb.calls``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

from fnlb.errors import ConfigError
from fnlb.timefmt import rfc3339_ms

if TYPE_CHECKING:
    from fnlb.phases import CallTimings
    from fnlb.tls import ClientTLS

__all__ = [
    "DETACHED",
    "SYNC",
    "Attempt",
    "CallModel",
    "MTLSRunnerFactory",
    "Placer",
    "PlacerConfig",
    "Refreshable",
    "ResponseSink",
    "Runner",
    "RunnerCall",
    "RunnerPool",
    "RunnerStatus",
]

# CallModel.type: fn's call types.
SYNC = "sync"
DETACHED = "detached"


@dataclass(frozen=True, slots=True)
class CallModel:
    """The subset of fn's ``models.Call`` the runner protocol carries."""

    id: str
    fn_id: str
    app_id: str = ""
    image: str = ""
    type: str = SYNC
    timeout: int = 30
    idle_timeout: int = 30
    memory: int = 128
    cpus: int = 0
    config: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, Sequence[str]] = field(default_factory=dict)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # The client says the function may run more than once (InvokeRequest.idempotent):
    # the LB's own business, not sent to runners.
    idempotent: bool = False

    def to_json(self) -> str:
        """fn's JSON field names; built once per call (see ``LBCall.model_json``)."""
        return json.dumps(
            {
                "id": self.id,
                "app_id": self.app_id,
                "fn_id": self.fn_id,
                "image": self.image,
                "type": self.type,
                "timeout": self.timeout,
                "idle_timeout": self.idle_timeout,
                "memory": self.memory,
                "cpus": self.cpus,
                "config": dict(self.config),
                "headers": {k: list(v) for k, v in self.headers.items()},
                "created_at": rfc3339_ms(self.created_at),
            },
            separators=(",", ":"),
        )

    def slot_key(self) -> str:
        """Calls with the same key can share a warm container (fn's slot queue key)."""
        # One hash call over the same bytes the former update() per part fed in.
        parts = [self.app_id, self.fn_id, self.image, str(self.memory), str(self.cpus),
                 str(self.timeout), str(self.idle_timeout), ""]
        text = "\0".join(parts) + "".join(f"{k}={self.config[k]}\0" for k in sorted(self.config))
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class Attempt(NamedTuple):
    """Outcome of ``Runner.try_exec``: fn's ``(placed bool, err error)``.

    placed=False: the runner did not take the call (NACK or unreachable); the
    placer may try elsewhere. placed=True: committed; ``error`` (if any) goes to
    the client and the call is never re-sent.
    """

    placed: bool
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class RunnerStatus:
    """A runner's health and load, as reported by its Status RPC."""

    active: int = 0
    requests_received: int = 0
    requests_handled: int = 0
    failed: bool = False
    error_code: int = 0
    error_str: str = ""
    is_network_disabled: bool = False
    draining: bool = False
    drained: bool = False
    slots_total: int = 0
    slots_free: int = 0
    memory_mb_total: int = 0
    memory_mb_free: int = 0
    warm_slots: tuple[str, ...] = ()
    runner_id: str = ""
    custom: Mapping[str, str] = field(default_factory=dict)
    # The optional RPCs it serves ("call": Runner/Call, "calls": Runner/Calls).
    features: frozenset[str] = frozenset()
    # Set on Runner/Watch messages: the longest the runner stays silent there.
    watch_heartbeat_ms: int = 0


class ResponseSink(Protocol):
    """Where a runner writes the function's response (fn: http.ResponseWriter)."""

    def start(self, status_code: int, headers: Sequence[tuple[str, str]]) -> None: ...

    def write(self, data: bytes) -> None: ...


class RunnerCall(Protocol):
    """One call as the placer and runners see it (fn's ``RunnerCall``)."""

    attempts: int  # runners tried so far; the placer counts them
    timings: CallTimings  # where the call's time goes, recorded as it goes (fnlb.phases)

    @property
    def slot_hash_id(self) -> str: ...

    @property
    def extensions(self) -> Mapping[str, str]: ...

    @property
    def model(self) -> CallModel: ...

    @property
    def model_json(self) -> str: ...

    def request_body(self) -> bytes:
        """The buffered body; every attempt re-sends exactly these bytes."""
        ...

    @property
    def response(self) -> ResponseSink: ...

    @property
    def stderr(self) -> list[bytes]: ...

    def add_user_execution_time(self, seconds: float) -> None: ...

    @property
    def user_execution_time(self) -> float | None: ...


@runtime_checkable
class Runner(Protocol):
    """A runner the LB can place calls on."""

    @property
    def address(self) -> str: ...

    async def try_exec(self, call: RunnerCall) -> Attempt: ...

    async def status(self) -> RunnerStatus:
        """Ask the runner how it is; a query only, with no effect on the runner or its channel."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class Refreshable(Protocol):
    """A runner whose connection follows what the LB and the runner know (``GrpcRunner``).

    ``refresh`` is the prober's explicit step, in place of ``status``: bring the
    connection up to date (re-dial when the client certificate changed), ask
    for the status, adopt what it says (the fast paths its features list),
    and return it. Runners without it are polled with ``status``.
    """

    async def refresh(self) -> RunnerStatus: ...


class RunnerPool(Protocol):
    """Gives placers the runners to try for a call.

    ``runners`` returns an immutable snapshot; it raises ``PoolError`` when the
    pool cannot produce runners (``retryable=False`` makes placers fail fast).
    """

    async def runners(self, call: RunnerCall) -> Sequence[Runner]: ...

    async def shutdown(self) -> None: ...


@dataclass(frozen=True, slots=True)
class PlacerConfig:
    """fn's PlacerConfig: times in seconds."""

    retry_all_delay: float = 0.010
    placer_timeout: float = 360.0
    detached_placer_timeout: float = 30.0

    def __post_init__(self) -> None:
        for name in ("retry_all_delay", "placer_timeout", "detached_placer_timeout"):
            value = getattr(self, name)
            if not value >= 0:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 0, got {value}")
        if self.placer_timeout == 0 or self.detached_placer_timeout == 0:
            raise ConfigError("placer timeouts must be > 0")


class Placer(Protocol):
    """A placement strategy: walks runners until one commits the call."""

    name: str

    @property
    def config(self) -> PlacerConfig: ...

    async def place_call(self, pool: RunnerPool, call: RunnerCall,
                         deadline: float | None = None) -> Runner:
        """Place ``call``; return the runner that committed it (and ran it OK).

        ``deadline`` is the client's deadline on the ``time.monotonic`` clock
        (fn: the request context's deadline); None means the client set none.

        Raises ServerTooBusy / ClientTimeout / ClientCanceled when nothing
        committed, PoolError on a non-retryable pool failure, RunnerError (or
        another FnlbError) when the committed runner failed the call.
        """
        ...


class MTLSRunnerFactory(Protocol):
    """fn's ``MTLSRunnerFactory(addr, tlsConf)``: plaintext when ``tls`` is None.

    ``tls``: the LB's client certificate, which follows its files; runners
    made with it re-dial when the files change (``Refreshable.refresh``).
    """

    def __call__(self, address: str, tls: ClientTLS | None) -> Runner: ...
