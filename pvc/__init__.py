"""pvc: the management layer of a PVC (Parallel Virtual Cluster) hypervisor cluster."""

__version__ = "0.1.0"
