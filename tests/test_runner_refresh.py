"""GrpcRunner: ``status()`` only asks; ``refresh()``, the prober's step, re-dials and negotiates."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from fnlb.runnerpool import Refreshable, Runner
from fnlb.tls import ClientTLS, TLSFiles, init_ca, issue_cert, server_credentials
from fnlb.transport import GrpcRunner
from fnlb.v1 import runner_pb2, runner_pb2_grpc
from tests.inproc import Counting, StreamOnlyRunner

MakeRunner = Callable[..., GrpcRunner]
Serve = Callable[[StreamOnlyRunner], Awaitable[Counting]]


class Featured(StreamOnlyRunner):
    """Lists ``features`` in its Status; remembers the client certificate of each poll."""

    def __init__(self, features: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.features = features
        self.client_serials: list[int] = []

    async def Status(self, request: Any, context: Any) -> runner_pb2.RunnerStatus:
        pem = context.auth_context().get("x509_pem_cert")
        if pem:
            self.client_serials.append(x509.load_pem_x509_certificate(pem[0]).serial_number)
        st = await super().Status(request, context)
        st.features.extend(self.features)
        return st


async def test_status_only_asks(make_runner: MakeRunner, in_process: Serve) -> None:
    servicer = Featured()  # fn-like: no fast paths
    counting = await in_process(servicer)
    gr = make_runner(servicer.addr)
    st = await gr.status()
    assert st.features == frozenset() and st.slots_total == 8
    assert gr.calls and gr.unary  # still the defaults: nothing was renegotiated
    assert counting.methods == Counter({"Status": 1})


@pytest.mark.parametrize(("features", "allow_calls", "calls", "unary"), [
    ((), True, False, False),
    (("call",), True, False, True),
    (("call", "calls"), True, True, True),
    (("call", "calls"), False, False, True),  # turned off at construction: stays off
])
async def test_refresh_adopts_the_fast_paths_status_lists(
        make_runner: MakeRunner, in_process: Serve, features: tuple[str, ...],
        allow_calls: bool, calls: bool, unary: bool) -> None:
    servicer = Featured(features)
    counting = await in_process(servicer)
    gr = make_runner(servicer.addr, calls=allow_calls)
    assert isinstance(gr, Runner) and isinstance(gr, Refreshable)  # what the prober checks
    st = await gr.refresh()
    assert st.features == frozenset(features)
    assert (gr.calls, gr.unary) == (calls, unary)
    assert counting.methods == Counter({"Status": 1})


@pytest.mark.parametrize(("features", "redials"), [
    (("keepalive",), 0),  # dialled pinging already: the first channel stays
    ((), 1),  # does not allow the pings: one re-dial without them
])
async def test_keepalive_runners_are_dialled_once(
        make_runner: MakeRunner, in_process: Serve, caplog: pytest.LogCaptureFixture,
        features: tuple[str, ...], redials: int) -> None:
    servicer = Featured(features)
    await in_process(servicer)
    gr = make_runner(servicer.addr)
    with caplog.at_level("INFO", logger="fnlb.transport.grpc_runner"):
        await gr.refresh()
        await gr.refresh()  # nothing changed: no re-dial either way
    dials = [r for r in caplog.records if r.getMessage() == "re-dialled runner"]
    assert len(dials) == redials
    assert gr.keepalive == ("keepalive" in features)


async def test_negotiate_follows_a_runner_that_changed(make_runner: MakeRunner,
                                                       in_process: Serve) -> None:
    servicer = Featured(("call", "calls"))
    await in_process(servicer)
    gr = make_runner(servicer.addr)
    gr.negotiate(await gr.status())
    assert gr.calls and gr.unary
    servicer.features = ()  # restarted as an fn runner on the same address
    gr.negotiate(await gr.status())
    assert not gr.calls and not gr.unary


@pytest.fixture
async def tls_runner(tmp_path: Path) -> AsyncIterator[tuple[Featured, Path]]:
    """A Featured runner on 127.0.0.1 that requires a client certificate of ``tmp_path/ca``."""
    ca = tmp_path / "ca"
    init_ca(ca)
    issue_cert(ca, "server", ["127.0.0.1"], tmp_path)
    issue_cert(ca, "client", ["client.test"], tmp_path)
    material = TLSFiles(tmp_path / "server.crt", tmp_path / "server.key", ca / "ca.crt").load()
    servicer = Featured()
    server = grpc.aio.server()
    runner_pb2_grpc.add_RunnerServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0",
                                  server_credentials(material, require_client_auth=True))
    servicer.addr = f"127.0.0.1:{port}"
    await server.start()
    yield servicer, tmp_path
    await server.stop(0)


async def test_status_does_not_redial_refresh_does(make_runner: MakeRunner,
                                                   tls_runner: tuple[Featured, Path]) -> None:
    servicer, d = tls_runner
    tls = ClientTLS(TLSFiles(d / "client.crt", d / "client.key", d / "ca" / "ca.crt"))
    gr = make_runner(servicer.addr, tls_source=tls)
    old = tls.material.serial
    await gr.status()
    issue_cert(d / "ca", "client", ["client.test"], d, force=True)
    assert tls.reload()  # the LB now holds a new client certificate
    new = tls.material.serial
    await gr.status()
    assert servicer.client_serials == [old, old]  # status() kept the old channel
    await gr.refresh()
    assert servicer.client_serials == [old, old, new]  # refresh() re-dialled first
    assert not gr.follow_tls()  # nothing changed since: no second re-dial
