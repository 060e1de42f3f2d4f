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
