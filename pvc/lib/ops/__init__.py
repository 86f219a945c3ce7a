"""Every operation module; importing this package registers all declarations."""

from pvc.lib.ops import cluster, network, node  # noqa: F401
