"""``fnlb serve --workers N``: N LB processes on one front-door port.

One Python process drives gRPC from one core at best, so the LB runs N worker
processes, each a full ``fnlb serve`` (its own placer state and pool, the same
flags) whose front door binds ``--listen`` with SO_REUSEPORT: the kernel
spreads client *connections* over the workers (one HTTP/2 connection stays on
one worker). The process the user started becomes the supervisor:

- it validates the configuration and refuses a port already in use before any
  worker starts;
- it serves ``--admin-listen`` (``FanOutAdminServicer``: changes reach every
  worker, ListRunners merges their answers) and ``--metrics-listen`` (every
  worker's metrics with a ``worker="i"`` label, plus its own);
- workers serve Admin and metrics only on unix sockets in a private (0700)
  directory, so no other local user reaches them;
- SIGTERM/SIGINT drain every worker (a second signal kills them), SIGHUP is
  passed on (certificate reload); a worker that dies is restarted with
  back-off and counted in ``fnlb_worker_restarts_total``; one that fails to
  start ``max_start_failures`` times in a row stops the supervisor with its
  error (``Supervisor.error``) rather than being retried for ever;
- each worker holds one end of a socketpair: the supervisor learns it is ready
  from it, and the worker sees EOF on it when the supervisor dies, and drains.
  No worker outlives its supervisor, even after a SIGKILL.

``_supervisor`` is the process the user started; ``_worker`` the worker's
side (its private endpoints, its link, its log tag), used by ``fnlb.cli``.
"""

from fnlb.workers._supervisor import Supervisor, WorkerStartError, check_port_free
from fnlb.workers._worker import (
    SupervisorLink,
    WorkerPaths,
    remove_private_endpoints,
    tag_worker_logs,
)

__all__ = ["Supervisor", "SupervisorLink", "WorkerPaths", "WorkerStartError", "check_port_free",
           "remove_private_endpoints", "tag_worker_logs"]
