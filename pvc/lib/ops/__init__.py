"""Every operation module; importing this package registers all declarations."""

from pvc.lib.ops import acl, cluster, lease, network, node, vm  # noqa: F401
