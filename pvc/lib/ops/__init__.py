"""Every operation module; importing this package fills the registry."""

from pvc.lib.ops import cluster, node  # noqa: F401
