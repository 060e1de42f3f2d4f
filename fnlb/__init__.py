"""fnlb: a gRPC runner-pool control plane (load balancer) for function calls."""

__version__ = "0.1.0"
