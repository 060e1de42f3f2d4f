"""A second process drives the runner stub with nothing but protos/fnlb/v1/runner.proto."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from fnlb.harness import running
from tests.helpers import grpcurl_path

ROOT = Path(__file__).resolve().parent.parent


def test_grpcurl_with_only_the_proto_runs_a_call_and_reads_status() -> None:
    call = {"id": "c-1", "fn_id": "hello", "type": "sync", "memory": 64, "config": {}}
    stream = (json.dumps({"try": {"models_call_json": json.dumps(call), "slot_hash_id": "ab"}})
              + json.dumps({"data": {"data": "aGk=", "eof": True}}))
    base = [grpcurl_path(), "-plaintext", "-import-path", str(ROOT / "protos"),
            "-proto", "fnlb/v1/runner.proto"]
    with running("runner_stub", ["--listen", "127.0.0.1:0"]) as stub:
        r = subprocess.run([*base, "-d", stream, stub.addr, "fnlb.v1.Runner/TryExec"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        msgs = [json.loads(m) for m in r.stdout.replace("}\n{", "}\x00{").split("\x00")]
        kinds = [next(iter(m)) for m in msgs]
        assert kinds[0] in ("resultStart", "result_start")
        assert kinds[-1] == "finished" and msgs[-1]["finished"]["success"] is True
        assert any(m.get("data", {}).get("data") == "aGk=" for m in msgs)
        r = subprocess.run([*base, stub.addr, "fnlb.v1.Runner/Status"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        status = json.loads(r.stdout)
        assert int(status["requestsHandled"]) == 1


def test_grpcurl_lists_both_runner_services_and_reads_fn_status() -> None:
    """fn's package-less RunnerProtocol is served beside fnlb.v1.Runner (issue 15)."""
    with running("runner_stub", ["--listen", "127.0.0.1:0", "--slots", "3"]) as stub:
        r = subprocess.run([grpcurl_path(), "-plaintext", stub.addr, "list"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        services = r.stdout.split()
        assert "fnlb.v1.Runner" in services and "RunnerProtocol" in services
        r = subprocess.run([grpcurl_path(), "-plaintext", stub.addr, "describe",
                            "RunnerProtocol"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert "rpc Engage ( stream .fnlb.v1.ClientMsg ) returns ( stream .fnlb.v1.RunnerMsg )" \
            in r.stdout
        # Over reflection, and with nothing but the .proto at hand.
        for how in ([], ["-import-path", str(ROOT / "protos"),
                         "-proto", "fnlb/fn/runner_protocol.proto"]):
            r = subprocess.run([grpcurl_path(), "-plaintext", *how, stub.addr,
                                "RunnerProtocol/Status"],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
            # grpcurl names fields slots_total over reflection, slotsTotal from a .proto.
            status = {k.replace("_", "").lower(): v for k, v in json.loads(r.stdout).items()}
            assert status["slotstotal"] == 3 and status["runnerid"] == stub.addr
