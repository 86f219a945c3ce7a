"""ZooKeeper's multiRead request (server 3.6 and later), which kazoo does not offer.

One multiRead carries many getData operations and comes back as one answer, each operation
succeeding or failing on its own. kazoo costs about a quarter of a millisecond of Python work per
separate request (a queue entry, a socket wake-up, an event per answer); a list of a few hundred
keys read one request each took ~100 ms, as one multiRead it takes a few.

The request is encoded exactly like kazoo's own Transaction (a MultiHeader before each operation
and a closing one), with the operation code of multiRead, and handed to kazoo's connection like
any of its requests, so it shares the session, the ordering and the error handling. The one
piece of kazoo that is not public API is ``KazooClient._call``, which queues a request; kazoo is
pinned below 3 in setup.cfg, and the tests read through this path on every run.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

from kazoo.exceptions import EXCEPTIONS
from kazoo.protocol.serialization import (
    GetChildren,
    GetData,
    MultiHeader,
    ZnodeStat,
    int_struct,
    multiheader_struct,
    read_buffer,
    read_string,
    stat_struct,
    write_string,
)

#: ZooKeeper's OpCode.multiRead.
MULTI_READ = 22


class MultiRead(namedtuple("MultiRead", "paths ops")):
    """The read operations ``ops`` (getData, and getChildren for a tree read) of every path
    (already prefixed with the chroot), in that order, in one request."""

    type = MULTI_READ

    def __new__(cls, paths: list[str], ops: tuple[int, ...] = (GetData.type,)) -> "MultiRead":
        return super().__new__(cls, paths, ops)

    def serialize(self) -> bytearray:
        b = bytearray()
        for path in self.paths:
            for op in self.ops:
                b.extend(multiheader_struct.pack(op, False, -1))
                b.extend(write_string(path))
                b.append(0)  # no watch
        b.extend(multiheader_struct.pack(-1, True, -1))
        return b

    @classmethod
    def deserialize(cls, data: bytes, offset: int) -> list[Any]:
        """One result per operation, in order: (bytes, ZnodeStat) for getData, [names] for
        getChildren, or an exception instance for one that failed."""
        results: list[Any] = []
        header, offset = MultiHeader.deserialize(data, offset)
        while not header.done:
            if header.type == GetData.type:
                value, offset = read_buffer(data, offset)
                stat = ZnodeStat._make(stat_struct.unpack_from(data, offset))
                offset += stat_struct.size
                results.append((value, stat))
            elif header.type == GetChildren.type:
                count = int_struct.unpack_from(data, offset)[0]
                offset += int_struct.size
                names = []
                for _ in range(max(count, 0)):
                    name, offset = read_string(data, offset)
                    names.append(name)
                results.append(names)
            elif header.type == -1:
                code = int_struct.unpack_from(data, offset)[0]
                offset += int_struct.size
                results.append(EXCEPTIONS[code]())
            else:
                raise ValueError(f"unexpected operation {header.type} in a multiRead answer")
            header, offset = MultiHeader.deserialize(data, offset)
        return results


#: The operations of a tree read: each key's data and its children's names.
TREE_OPS = (GetData.type, GetChildren.type)


def send(client: Any, paths: list[str]) -> Any:
    """Queue a multiRead of ``paths`` (relative to the client's chroot); returns kazoo's async result."""
    chroot = client.chroot or ""
    full = [chroot + p if p != "/" else (chroot or "/") for p in paths]
    result = client.handler.async_result()
    client._call(MultiRead(full), result)
    return result
