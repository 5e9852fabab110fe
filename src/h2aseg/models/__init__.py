"""Networks: H2ASeg (ours, paper and released variants) and the comparison baselines, built by name.

Importing this package registers every network (the modules below call ``register_network``).
"""

from h2aseg.models import baselines as _baselines  # noqa: F401  (registers the comparison networks)
from h2aseg.models import h2aseg as _h2aseg  # noqa: F401  (registers "h2aseg")
from h2aseg.models.registry import build_network, list_networks, register_network

__all__ = ["build_network", "list_networks", "register_network"]
