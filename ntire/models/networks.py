"""The networks ntire knows: `ModelConfig.kind` -> the network's `Network` (ntire/models/network.py).

Adding a network is its module (the class and its `NETWORK`, like edsr.py) plus one line here.
An explicit dict, not a registry: what exists is read here, and nothing is imported by name.
"""

from __future__ import annotations

from ntire.models import edsr, mdsr
from ntire.models.network import Network

NETWORKS: dict[str, Network] = {
    "edsr": edsr.NETWORK,
    "mdsr": mdsr.NETWORK,
}
"""Every network a config may name, by kind."""
