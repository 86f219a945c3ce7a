"""Every module of pvc imports on its own, in a fresh interpreter: no import cycle hides behind
the order in which the CLI happens to import things (placement → ops.node → ops → ops.vm →
placement was one)."""

from __future__ import annotations

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
