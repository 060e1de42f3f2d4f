"""``fnlb serve --workers N``: N LB processes on one front-door port."""

from fnlb.workers._supervisor import (
    Supervisor,
    SupervisorLink,
    WorkerPaths,
    WorkerStartError,
    check_port_free,
    remove_private_endpoints,
    tag_worker_logs,
)

__all__ = ["Supervisor", "SupervisorLink", "WorkerPaths", "WorkerStartError", "check_port_free",
           "remove_private_endpoints", "tag_worker_logs"]
