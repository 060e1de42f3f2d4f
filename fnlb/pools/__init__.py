"""Runner pools: where placers get their runners from."""

from fnlb.pools._address import parse_address, parse_address_list
from fnlb.pools.static import StaticRunnerPool

__all__ = ["StaticRunnerPool", "parse_address", "parse_address_list"]
