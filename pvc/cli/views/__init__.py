"""Table and info views of each kind of object; importing this package registers them."""

from pvc.cli.views import node  # noqa: F401
