"""The CLI's parsed-XML cache on disk (pvc.lib.vm_xml.ParsedCache.persist/save): a fresh `pvc`
process reuses what an earlier one parsed, but only for exactly the same text."""

from __future__ import annotations

import os
from pathlib import Path

from pvc.lib import vm_xml
from pvc.lib.vm_xml import ParsedCache
from tests.agent_fixtures import uuid_of, vm_xml as domain

KEY = "/domains/x/xml"


def fresh(path: Path) -> ParsedCache:
    cache = ParsedCache()
    cache.persist(str(path))
    return cache


def test_a_later_process_reuses_the_parsed_facts(tmp_path: Path) -> None:
    path = tmp_path / "pvc" / "vm-facts"
    text = domain("web1", uuid_of(1), memory_mib=512)
    first = fresh(path)
    parsed = first.get(KEY, 3, text)
    assert first.parses == 1 and parsed.facts["memory"] == 512
    first.save()
    assert path.exists() and oct(path.stat().st_mode & 0o777) == "0o600"
    second = fresh(path)
    again = second.get(KEY, 3, text)
    assert second.parses == 0 and again == parsed
    # Same key and version, other text (a VM defined anew): parsed again, never the old facts.
    other = domain("web1", uuid_of(1), memory_mib=1024)
    assert second.get(KEY, 3, other).facts["memory"] == 1024 and second.parses == 1
    # Another version: parsed again.
    assert second.get(KEY, 4, text).facts["memory"] == 512 and second.parses == 2


def test_nothing_parsed_nothing_written(tmp_path: Path) -> None:
    path = tmp_path / "vm-facts"
    cache = fresh(path)
    cache.save()
    assert not path.exists()


def test_a_broken_or_foreign_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "vm-facts"
    text = domain("web2", uuid_of(2))
    path.write_bytes(b"not marshal data at all")
    cache = fresh(path)
    assert cache.get(KEY, 0, text).name == "web2" and cache.parses == 1
    cache.save()
    assert fresh(path).get(KEY, 0, text).name == "web2"
    # A file others may write is not trusted.
    os.chmod(path, 0o666)
    untrusted = fresh(path)
    untrusted.get(KEY, 0, text)
    assert untrusted.parses == 1


def test_format_change_ignores_old_files(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "vm-facts"
    text = domain("web3", uuid_of(3))
    cache = fresh(path)
    cache.get(KEY, 0, text)
    cache.save()
    monkeypatch.setattr(vm_xml, "_CACHE_FORMAT", "pvc-vm-facts-next")
    later = fresh(path)
    later.get(KEY, 0, text)
    assert later.parses == 1


def test_pvc_vm_list_keeps_its_parses(core, settings, add_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The real command: the first `pvc vm list` writes the cache, and what a second one reads is
    the same list."""
    import json
    import subprocess
    import sys

    from pvc.lib.ops import vm as vm_ops
    from tests.agent_fixtures import config_file

    add_node("hv1")
    for i in range(3):
        vm_ops.define_vm(core, domain(f"vm{i}", uuid_of(i)), node="hv1")
    config = config_file(tmp_path / "pvc.yaml", settings)
    env = {**os.environ, "PVC_CONFIG_FILE": str(config), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    pvc = [str(Path(sys.executable).parent / "pvc"), "vm", "list", "--format", "json"]
    first = subprocess.run(pvc, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "cache" / "pvc" / "vm-facts").exists()
    second = subprocess.run(pvc, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and json.loads(second.stdout) == json.loads(first.stdout)
    assert [vm["name"] for vm in json.loads(second.stdout)] == ["vm0", "vm1", "vm2"]
