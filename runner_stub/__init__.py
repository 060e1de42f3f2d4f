"""A fake runner: speaks ``fnlb.v1.Runner`` and fn's ``RunnerProtocol`` for real; fake functions.

    python -m runner_stub --listen 127.0.0.1:0 --slots 4 --cold-start-ms 200

Modules: ``config`` (StubConfig), ``slots`` (slots, memory, warm LRU),
``calls`` (models_call_json), ``functions`` (the fake functions), ``server``
(servicer and StubServer lifecycle), ``fn_protocol`` (fn's RunnerProtocol over
the same servicer), ``call_logs`` (per-call log lines for StreamLogs), ``cli``
(flags, env, signals).
"""

from runner_stub.config import StubConfig
from runner_stub.server import StubServer

__all__ = ["StubConfig", "StubServer"]
