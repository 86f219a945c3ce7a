"""Table and info views of each kind of object; importing this package registers them."""

from pvc.cli.views import acl, node  # noqa: F401
from pvc.cli.views import vm  # noqa: F401
from pvc.cli.views import network  # noqa: F401
from pvc.cli.views import storage  # noqa: F401
