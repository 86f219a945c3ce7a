"""ACL views: `pvc network acl list` and `info`, in the original's columns (its §5.3)."""

from __future__ import annotations

from typing import Any

from pvc.cli.render import Paint, renderer, table


@renderer("acl_list")
def acl_list(acls: list[dict[str, Any]], paint: Paint, long: bool) -> str:
    # Rows stay in the library's order (direction, then numeric order); the original sorted the
    # printed lines as text, which put order 10 before 2 (its bug L14).
    rows = [[a["direction"], a["order"], a["description"], a["rule"]] for a in acls]
    return table(["Direction", "Order", "Description", "Rule"], rows, paint)
