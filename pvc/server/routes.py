"""Registry → Bottle: one route per operation, built inside create_app; and the response cache of
the GET routes.

Each route gathers the path wildcards and the request values, rejects values the operation does
not take, converts them with the registry's converters (the same as the CLI's), calls the library
function and returns its data; the plugin in :mod:`pvc.server.app` turns that into JSON.

**The response cache** (`pvc serve` on its read view, :class:`pvc.lib.store.view.ViewStore`):
a GET's answer, encoded, is kept under its operation and values with the generations of the
mirrored subtrees its computation read, taken before the computation began; it is reused only
while all of those are unchanged, so it is never older than the view. Agents' keepalives move
``/nodes`` and leave the VM list cached; a VM's change moves ``/domains`` only. What the cache
never sees, by construction:

- authentication: the contract plugin checks credentials before the route's callback runs, on
  every request, hit or miss;
- error answers: they are exceptions, raised through the cache and answered by the plugin;
  only a computed 200 body is stored;
- anything but GET operations: a write's callback does not reach the cache at all;
- an answer whose computation read anything from the store itself (the view was not current, or
  a key it does not mirror), or wrote, or read nothing at all: computed, answered, not kept.

A client reads its own write: the view catches up with a write before the write's answer, which
moves the generations. Memory: encoded bodies are bounded in bytes (:data:`CACHE_BYTES`), least
recently used first out. The full VM list is built from one encoded fragment per VM, reused
while the VM's keys are unchanged (:class:`VmListFragments`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterator

import bottle

from pvc.lib import schema
from pvc.lib.core import Cluster
from pvc.lib.errors import InvalidArgument, NotFound, quote
from pvc.lib.registry import Operation, convert
from pvc.server.errors import dumps
from pvc.server.values import request_values

if TYPE_CHECKING:
    from pvc.lib.store.view import ViewStore

PREFIX = "/api/v1"

#: Bytes of encoded answers the response cache keeps (bodies only; a few hundred bytes of
#: bookkeeping each on top). The full VM list at 10,000 VMs is about 30 MB.
CACHE_BYTES = 64 * 1024 * 1024
#: Answers larger than this are handed to the server in pieces of this size: cheroot copies what
#: it is given into a buffer and copies that again for every socket write, so one 30 MB piece
#: would cost two more copies of it and a quadratic number of bytes moved.
PIECE = 64 * 1024
#: A VM list that encoded this many VMs anew gives the freed memory back (:func:`release_memory`).
RELEASE_AFTER = 1000


class Body:
    """An encoded answer in :data:`PIECE`-sized pieces (each a new bytes object: cheroot wants
    bytes), from one bytes object that a cache may share."""

    def __init__(self, data: bytes):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator[bytes]:
        data = self.data
        if len(data) <= PIECE:
            yield data
            return
        view = memoryview(data)
        for start in range(0, len(data), PIECE):
            yield bytes(view[start:start + PIECE])


def http_response(data: bytes, content_type: str, status: int | str = 200,
                  headers: dict[str, str] | None = None) -> bottle.HTTPResponse:
    """An answer of encoded ``data``, in pieces when it is large."""
    body: Any = data if len(data) <= PIECE else Body(data)
    return bottle.HTTPResponse(body, status, {"Content-Type": content_type, "Content-Length": str(len(data)),
                                              **(headers or {})})


JSON = "application/json"


class _Cached:
    __slots__ = ("generations", "body", "content_type", "size")

    def __init__(self, generations: tuple[tuple[str, int], ...], body: bytes, content_type: str):
        self.generations = generations
        self.body = body
        self.content_type = content_type
        self.size = len(body) + 200


class ResponseCache:
    """Encoded GET answers, valid while the view's subtrees they read are unchanged (see the
    module's docstring); at most ``limit`` bytes of bodies, least recently used out first."""

    STRIPES = 16

    def __init__(self, view: "ViewStore", limit: int = CACHE_BYTES):
        self.view = view
        self.limit = limit
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, _Cached] = OrderedDict()
        self._lock = threading.Lock()
        # One computation of a key at a time: 32 workers asked for the same 30 MB list while it
        # is being computed wait for it, rather than each building a copy of their own.
        self._stripes = [threading.Lock() for _ in range(self.STRIPES)]

    def __len__(self) -> int:
        return len(self._items)

    def _valid(self, key: Hashable, state: dict[str, int]) -> _Cached | None:
        found = self._items.get(key)
        if found is None:
            return None
        if any(state.get(root) != generation for root, generation in found.generations):
            with self._lock:  # outdated for good: generations only grow
                if self._items.get(key) is found:
                    del self._items[key]
                    self.size -= found.size
            return None
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
        return found

    def _keep(self, key: Hashable, entry: _Cached) -> None:
        if entry.size > self.limit:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.size -= old.size
            self._items[key] = entry
            self.size += entry.size
            while self.size > self.limit:
                _key, dropped = self._items.popitem(last=False)
                self.size -= dropped.size

    def answer(self, key: Hashable, compute: Callable[[], tuple[bytes, str]]) -> tuple[bytes, str]:
        """The encoded answer ``compute()`` would give now, and its content type: kept, or
        computed (and kept when it followed only the view). ``compute``'s errors pass through
        and nothing is kept."""
        state = self.view.state()
        if state is None:  # not answered from memory now: nothing may be kept or reused
            return compute()
        found = self._valid(key, state)
        if found is None:
            with self._stripes[hash(key) % self.STRIPES]:
                state = self.view.state()  # as of now: another worker may have computed it meanwhile
                if state is None:
                    return compute()
                found = self._valid(key, state)
                if found is None:
                    self.misses += 1
                    with self.view.recording() as reads:
                        body, content_type = compute()
                    if reads.pure:
                        # The generations from before the computation: a change applied while
                        # it ran moves them, and the next request computes again.
                        self._keep(key, _Cached(tuple((root, state[root]) for root in sorted(reads.roots)),
                                                body, content_type))
                    return body, content_type
        self.hits += 1
        return found.body, found.content_type


class VmListFragments:
    """The full VM list (``GET /vm`` without values), compact JSON, built from one encoded
    fragment per VM: a VM is encoded again only when the view's stamp of its subtree moved, so a
    list after one VM changed costs one VM's encoding, a sort and one copy of the answer.

    The answer is byte for byte ``dumps(list_vms(core))`` (a test compares them): the same VMs
    (those under ``/domains`` whose key still exists), ``vm_object`` of the same fields, sorted
    by name then UUID. The fragments are spans of the last answer (which the response cache
    holds too: one buffer, not two), and unchanged VMs that stay neighbours are copied as one
    span. The bookkeeping is tuples of strings and numbers, which the cyclic garbage collector
    soon stops following: a list of 10,000 VMs must not set off full collections."""

    def __init__(self, view: "ViewStore"):
        self.view = view
        #: uuid -> (stamp, name, start, end): the VM's fragment is self._body[start:end].
        self._index: dict[str, tuple[int, str, int, int]] = {}
        self._body = b""
        self._lock = threading.Lock()

    def build(self, core: Cluster) -> bytes | None:
        """The list's JSON; None when the view is not current (use the operation itself)."""
        from pvc.lib.vm_records import OBJECT_FIELDS, read_vms, vm_object

        with self._lock:
            try:
                stamps = self.view.child_stamps(schema.DOMAINS)
            except NotFound:
                return None  # the operation says what is wrong
            if stamps is None:
                return None
            index, old = self._index, memoryview(self._body)
            changed = [uuid for uuid, stamp in stamps if (e := index.get(uuid)) is None or e[0] != stamp]
            fresh = {vm.uuid: vm for vm in read_vms(core, changed, OBJECT_FIELDS)}  # gone meanwhile: left out
            # (name, uuid, stamp, start, end) in the last answer; start -1: to encode
            rows: list[tuple[str, str, int, int, int]] = []
            for uuid, stamp in stamps:
                e = index.get(uuid)
                if e is not None and e[0] == stamp:
                    rows.append((e[1], uuid, stamp, e[2], e[3]))
                elif uuid in fresh:
                    rows.append((fresh[uuid].name, uuid, stamp, -1, -1))
            rows.sort()  # by name, then UUID (unique: never further)
            pieces: list[Any] = [b"["]
            new_index: dict[str, tuple[int, str, int, int]] = {}
            at, run_start, run_end = 1, -1, -1
            for name, uuid, stamp, start, end in rows:
                if start >= 0 and run_start >= 0 and start == run_end + 1:
                    run_end = end  # the next neighbour in the last answer too: one span
                else:
                    if run_start >= 0:
                        pieces += [old[run_start:run_end], b","]
                        run_start = -1
                    if start >= 0:
                        run_start, run_end = start, end
                    else:
                        pieces += [dumps(vm_object(fresh[uuid])).encode(), b","]
                size = (end - start) if start >= 0 else len(pieces[-2])
                new_index[uuid] = (stamp, name, at, at + size)
                at += size + 1
            if run_start >= 0:
                pieces += [old[run_start:run_end], b","]
            if len(pieces) > 1:
                pieces[-1] = b"]"
            else:
                pieces.append(b"]")
            body = b"".join(pieces)
            del pieces, old
            self._index, self._body = new_index, body  # VMs no longer listed are forgotten
        if len(changed) >= RELEASE_AFTER:
            release_memory()
        return body


_trim: Any = None


def release_memory() -> None:
    """Give the memory freed after a large computation back to the system (glibc's
    malloc_trim; elsewhere nothing). The first VM list encodes every VM apart before joining
    them: those thousands of small blocks, freed, would otherwise stay in the process's heap."""
    global _trim
    if _trim is None:
        import ctypes
        import platform

        _trim = False
        if platform.libc_ver()[0] == "glibc":
            try:
                _trim = ctypes.CDLL(None).malloc_trim
            except (OSError, AttributeError):
                pass
    if _trim:
        _trim(0)


def route_callback(op: Operation, core: Cluster, caches: "_Caches") -> Callable[..., Any]:
    takes = {p.http_name: p for p in op.params if p.name not in op.path_params}
    pretty = core.settings.debug

    def encode(result: Any) -> tuple[bytes, str]:
        if op.result == "document":
            return result.encode(), op.content_type
        return dumps({"message": result} if op.result == "message" else result, pretty).encode(), JSON

    def callback(**url_args: str) -> Any:
        values = request_values(bottle.request)
        unknown = sorted(set(values) - set(takes))
        if unknown:
            accepted = ", ".join(sorted(takes)) or "no values"
            raise InvalidArgument(f"Unknown value {quote(unknown[0])}; this route takes {accepted}.")
        kwargs = {name: convert(op.param(name), raw) for name, raw in url_args.items()}
        for http_name, p in takes.items():
            if http_name in values:
                kwargs[p.name] = convert(p, values[http_name])
            elif p.required:
                raise InvalidArgument(f"Missing value {quote(http_name)}: {p.help}")
        if op.method != "GET":  # writes never go near the response cache
            result = op.func(core, **kwargs)
            if op.result == "document":
                return bottle.HTTPResponse(result, 200, {"Content-Type": op.content_type})
            return {"message": result} if op.result == "message" else result
        cache = caches.get(core)
        try:
            key: Hashable = (op.name, tuple(sorted(kwargs.items())))
            hash(key)
        except TypeError:  # a value of several items: not kept
            cache = None

        def compute() -> tuple[bytes, str]:
            if op.name == "vm.list" and not kwargs and not pretty and caches.fragments is not None:
                body = caches.fragments.build(core)
                if body is not None:
                    return body, JSON
            return encode(op.func(core, **kwargs))

        body, content_type = compute() if cache is None else cache.answer(key, compute)
        return http_response(body, content_type)

    return callback


class _Caches:
    """The app's response cache, made on the first GET: there only when the cluster reads
    through a view (`pvc serve`); a Cluster on the store itself caches nothing."""

    def __init__(self, enabled: bool, limit: int):
        self.enabled = enabled
        self.limit = limit
        self.cache: ResponseCache | None = None
        self.fragments: VmListFragments | None = None
        self._decided = False
        self._lock = threading.Lock()

    def get(self, core: Cluster) -> ResponseCache | None:
        if not self._decided:
            with self._lock:
                if not self._decided:
                    from pvc.lib.store.view import ViewStore

                    store = core.store
                    if self.enabled and isinstance(store, ViewStore):
                        self.cache = ResponseCache(store, self.limit)
                        self.fragments = VmListFragments(store)
                    self._decided = True
        return self.cache


def add_routes(app: bottle.Bottle, core: Cluster, operations: dict[str, Operation], cache: bool = True,
               cache_bytes: int = CACHE_BYTES) -> _Caches:
    """Add a route per operation; returns the response cache's holder (``.cache``, None until
    the first GET, and always without a read view or with ``cache`` false)."""
    caches = _Caches(cache, cache_bytes)
    for op in operations.values():
        callback = route_callback(op, core, caches)
        for path in op.paths:
            # Only the main path carries the name: bottle's URL builder wants one rule per name.
            name = op.name if path == op.path else None
            app.route(PREFIX + path, method=op.method, callback=callback, name=name, pvc_operation=op)
    return caches


def route_table(operations: dict[str, Operation]) -> list[tuple[str, str, str]]:
    """(method, path, operation) for every operation route, as `pvc serve --routes` lists them."""
    return [(op.method, PREFIX + path, op.name) for op in operations.values() for path in op.paths]
