"""The operation modules. Importing one registers its declarations; :func:`pvc.lib.registry.load_all`
imports them all. The package itself imports none, so that a command needs only its own group's."""

#: Every operation module, for load_all().
MODULES = ("acl", "cluster", "lease", "network", "node", "storage", "vm")
