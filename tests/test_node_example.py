"""examples/node: a grpc-js client reading protos/ directly, against a real LB and runner stubs.

The npm packages (examples/node/package-lock.json) are installed into
build/node-example, never into examples/node, with downloads cached in
~/.cache/fnlb-npm (NPM_CACHE) across clean clones. Skipped, saying why, only
where node or npm is missing (.ci/run installs both).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fnlb.harness import running, running_stubs

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "node"
INSTALL = ROOT / "build" / "node-example"


def _npm_install() -> Path:
    """node_modules for the example, reinstalled only when its lock file changed."""
    lock = (EXAMPLE / "package-lock.json").read_bytes()
    stamp = INSTALL / ".lock-sha256"
    digest = hashlib.sha256(lock).hexdigest()
    modules = INSTALL / "node_modules"
    if stamp.exists() and stamp.read_text() == digest and modules.is_dir():
        return modules
    shutil.rmtree(INSTALL, ignore_errors=True)
    INSTALL.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(EXAMPLE / name, INSTALL / name)
    cache = os.environ.get("NPM_CACHE", str(Path.home() / ".cache" / "fnlb-npm"))
    r = subprocess.run(["npm", "ci", "--cache", cache, "--no-audit", "--no-fund",
                        "--loglevel=error"], cwd=INSTALL, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"npm ci failed:\n{r.stdout}\n{r.stderr}"
    stamp.write_text(digest)
    return modules


def test_node_client_invokes_streams_and_gets_the_error_codes() -> None:
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (Debian: apt-get install nodejs npm;"
                    " .ci/run installs them)")
    modules = _npm_install()
    with running_stubs(2) as stubs, running("fnlb", [
            "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
            "--admin-listen", "127.0.0.1:0", "--runners", ",".join(s.addr for s in stubs)]) as lb:
        env = dict(os.environ, NODE_PATH=str(modules), CALLS="50",
                   STREAM_BYTES=str(5 * 1024 * 1024))
        r = subprocess.run(["node", str(EXAMPLE / "client.js"), lb.addr], env=env,
                           capture_output=True, text=True, timeout=120)
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    checks = {line["check"]: line for line in lines if "check" in line}
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    assert checks["invoke"]["succeeded"] == 50
    assert checks["stream"]["received"] == 5 * 1024 * 1024 and checks["stream"]["ok"]
    # More than one response message: the body streamed, it was not one reply.
    assert checks["stream"]["messages"] > 1
    assert checks["deadline"]["code"] == "DEADLINE_EXCEEDED"
    assert checks["invalid"]["code"] == "INVALID_ARGUMENT"
    assert checks["invalid"]["details"] == "fn_id: required"
    assert lines[-1] == {"summary": {"passed": 4, "failed": 0}}
