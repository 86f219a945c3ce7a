"""Every module of pvc imports on its own, in a fresh interpreter: no import cycle hides behind
the order in which the CLI happens to import things (placement → ops.node → ops → ops.vm →
placement was one)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pvc


def modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(pvc.__path__, "pvc.") if not m.name.endswith("__main__"))


def test_every_module_imports_on_its_own() -> None:
    names = modules()
    assert "pvc.lib.placement" in names and "pvc.agent.daemon" in names
    # One interpreter per module, several at a time.
    procs = {n: subprocess.Popen([sys.executable, "-c", f"import {n}"], stderr=subprocess.PIPE, text=True)
             for n in names}
    failures = {}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            failures[name] = err.strip().splitlines()[-1]
    assert failures == {}


def test_the_command_root_imports_no_library() -> None:
    """`import pvc.cli` (what `pvc --help` and completion start with) loads Click and the lazy
    tree only: the operation registry, the store and the commands load when a group is used."""
    code = "import json, sys; import pvc.cli; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    loaded = set(json.loads(out.stdout))
    assert {"click", "pvc.cli", "pvc.cli.groups"} <= loaded
    assert sorted(m for m in loaded if m.startswith(("pvc.lib", "pvc.cli.build", "pvc.cli.commands", "pvc.cli.views",
                                                      "yaml", "tabulate"))) == []
