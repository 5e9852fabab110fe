"""Networks: H2ASeg (paper and released variants) and baselines, built by name from a registry."""

from h2aseg.models.registry import build_network, list_networks, register_network

__all__ = ["build_network", "list_networks", "register_network"]
