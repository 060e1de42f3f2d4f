"""fn's runner protocol on the LB side, without processes: addresses that name
a protocol, what an fn runner's Status means here, the protocol per address."""

from __future__ import annotations

import pytest

from fnlb.errors import ConfigError
from fnlb.pools import parse_address, parse_address_list
from fnlb.pools._address import split_scheme
from fnlb.pools.dns import parse_discovery
from fnlb.pools.file import parse_runners_file
from fnlb.transport.fn_runner import FN, FNLB, protocol_of, status_from_fn
from fnlb.transport.grpc_runner import GrpcRunner
from fnlb.v1 import runner_pb2


@pytest.mark.parametrize(("text", "parsed"), [
    ("fn://10.0.0.5:9190", "fn://10.0.0.5:9190"),
    ("FN://runner-a:09190", "fn://runner-a:9190"),
    ("fnlb://[::1]:9190", "fnlb://[::1]:9190"),
    (" 10.0.0.5:9190 ", "10.0.0.5:9190"),
])
def test_addresses_may_name_the_protocol(text: str, parsed: str) -> None:
    assert parse_address(text) == parsed


@pytest.mark.parametrize("text", ["http://a:1", "fn://a", "fn://:1", "fn:/a:1", "grpc://a:1"])
def test_bad_protocol_addresses_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--runners"):
        parse_address(text)


def test_every_address_source_takes_the_override() -> None:
    assert parse_address_list("fn://a:1, a:1 fnlb://b:2") == ["fn://a:1", "a:1", "fnlb://b:2"]
    assert parse_runners_file("fn://a:1  # an fn runner\nb:2\n") == ["fn://a:1", "b:2"]
    # DNS names hosts, not protocols: --runner-protocol applies to what it finds.
    with pytest.raises(ConfigError):
        parse_discovery("dns:///fn://runners:9190")
    assert split_scheme("fn://a:1") == ("fn", "a:1") and split_scheme("a:1") == (None, "a:1")


def test_fn_status_has_fn_fields_only() -> None:
    s = runner_pb2.RunnerStatus(active=3, failed=True, errorCode=500, errorStr="x",
                                requestsReceived=9, requestsHandled=7, isNetworkDisabled=True,
                                customStatus={"k": "v"}, slots_total=8, slots_free=2,
                                draining=True, features=["calls"])
    st = status_from_fn(s)
    assert (st.active, st.failed, st.error_code, st.requests_received,
            st.requests_handled, st.is_network_disabled, dict(st.custom)) == (
        3, True, 500, 9, 7, True, {"k": "v"})
    # What fn's runners never say is not believed: capacity unknown, no fast paths.
    assert (st.slots_total, st.slots_free, st.draining, st.features) == (0, 0, False,
                                                                         frozenset())


@pytest.mark.parametrize(("address", "setting", "protocol", "target"), [
    ("fn://127.0.0.1:1", "fnlb", FN, "127.0.0.1:1"),
    ("fnlb://127.0.0.1:1", "fn", FNLB, "127.0.0.1:1"),
    ("127.0.0.1:1", "fn", FN, "127.0.0.1:1"),
    ("127.0.0.1:1", "auto", "", "127.0.0.1:1"),     # learned from Status
])
async def test_runner_protocol_per_address(address: str, setting: str, protocol: str,
                                           target: str) -> None:
    r = GrpcRunner(address, protocol=setting)
    try:
        assert r.address == address  # the pool's key keeps the scheme
        assert r.protocol == protocol
        assert r._target == target
    finally:
        await r.close()


def test_protocol_of() -> None:
    assert protocol_of(None, "auto") == "auto"
    assert protocol_of("fn", "fnlb") == "fn"
    with pytest.raises(ValueError):
        protocol_of("http", "auto")
