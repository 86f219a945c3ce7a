"""The node agent: one per hypervisor node (the original's node daemon).

It registers its host under ``/nodes/<name>``, publishes keepalives with real figures, and
carries out what the tree asks of its node: VM states and migrations through the hypervisor,
flush and ready, the primary coordinator's role, and the detection and fencing of dead nodes.
``pvc agent`` runs one; ``pvc serve`` on the embedded store runs one for the local host.
"""
