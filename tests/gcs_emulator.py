"""A local, in-memory Google Cloud Storage for tests (gcp-storage-emulator).

Also the environment variables that point tensorstore, gcsfs/etils.epath and google-cloud-storage at
it.

    server, env = start()      # env: os.environ plus the emulator's variables
    ... subprocess.run([...], env=env) ...
    server.stop()

Three gaps of the emulator, in requests that tensorstore's GCS driver sends and real GCS serves,
are filled here by wrapping its handlers: object listing ignores `startOffset`/`endOffset` (the
listing would hold objects outside the asked-for key range); downloads ignore suffix byte
ranges (`Range: bytes=-N`, the last N bytes: how a zarr shard index is read) and carry no
`x-goog-generation` header (which tensorstore needs to tell versions of an object apart); and
uploads and deletes ignore the `ifGenerationMatch` precondition (0 = only if the object does not
exist), which the workdir lock relies on for an atomic create (gemmascope/study/lock.py).
"""

from __future__ import annotations

import os
import socket

import pytest


class _OffsetFilter:
    """Stands in for the emulator's response object; filters listed items by the key range."""

    def __init__(self, response, start: str | None, end: str | None):
        self._response, self._start, self._end = response, start, end

    def __getattr__(self, name):
        return getattr(self._response, name)

    def json(self, payload):
        if isinstance(payload, dict) and "items" in payload:
            payload = dict(payload)
            payload["items"] = [
                item
                for item in payload["items"]
                if (self._start is None or item["name"] >= self._start)
                and (self._end is None or item["name"] < self._end)
            ]
        return self._response.json(payload)


def _honour_list_offsets(server_module, objects_module) -> None:
    original = objects_module.ls

    def ls(request, response, storage, *args, **kwargs):
        query = request.query
        start = query["startOffset"][0] if query.get("startOffset") else None
        end = query["endOffset"][0] if query.get("endOffset") else None
        return original(request, _OffsetFilter(response, start, end), storage, *args, **kwargs)

    for _, handlers in server_module.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler is original:
                handlers[method] = ls


class _SuffixRange:
    """Stands in for the emulator's request object; turns `bytes=-N` into `bytes=<size-N>-`."""

    def __init__(self, request, size: int):
        self._request, self._size = request, size

    def __getattr__(self, name):
        return getattr(self._request, name)

    def get_header(self, name, default=None):
        value = self._request.get_header(name, default)
        if name.lower() == "range" and value and value.strip().startswith("bytes=-"):
            suffix = int(value.strip()[len("bytes=-") :])
            return f"bytes={max(self._size - suffix, 0)}-"
        return value


def _honour_suffix_ranges(server_module, objects_module) -> None:
    original = objects_module.download

    def download(request, response, storage, *args, **kwargs):
        bucket, name = request.params["bucket_name"], request.params["object_id"]
        try:
            size = len(storage.get_file(bucket, name))
            generation = storage.get_file_obj(bucket, name)["generation"]
        except Exception:  # a missing object: let the emulator answer 404 itself
            return original(request, response, storage, *args, **kwargs)
        response["x-goog-generation"] = str(generation)
        return original(_SuffixRange(request, size), response, storage, *args, **kwargs)

    objects_module.download = download  # objects.get(alt=media) calls it by this name
    for _, handlers in server_module.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler is original:
                handlers[method] = download


def _honour_generation_match(server_module, objects_module) -> None:
    """Answers 412 Precondition Failed to uploads and deletes whose ifGenerationMatch fails."""
    from http import HTTPStatus

    def guarded(original):
        def handler(request, response, storage, *args, **kwargs):
            wanted = request.query.get("ifGenerationMatch")
            bucket = request.params["bucket_name"]
            name = request.params.get("object_id") or (request.query.get("name") or [""])[0]
            if wanted and name:  # (a multipart upload names its object in the body: not checked)
                try:
                    current = str(storage.get_file_obj(bucket, name)["generation"])
                except Exception:  # no such object: generation 0
                    current = "0"
                if current != wanted[0]:
                    response.status = HTTPStatus.PRECONDITION_FAILED
                    return None
            return original(request, response, storage, *args, **kwargs)

        return handler

    for original in (objects_module.insert, objects_module.delete):
        wrapped = guarded(original)
        for _, handlers in server_module.HANDLERS:
            for method, handler in list(handlers.items()):
                if handler is original:
                    handlers[method] = wrapped


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start(bucket: str):
    """Starts an emulator holding one empty `bucket`; returns (server, environment)."""
    server_module = pytest.importorskip("gcp_storage_emulator.server")
    from gcp_storage_emulator.handlers import objects

    _honour_list_offsets(server_module, objects)
    _honour_suffix_ranges(server_module, objects)
    _honour_generation_match(server_module, objects)
    port = _free_port()
    server = server_module.create_server("localhost", port, in_memory=True, default_bucket=bucket)
    server.start()
    url = f"http://localhost:{port}"
    env = dict(os.environ)
    env.update(
        STORAGE_EMULATOR_HOST=url,  # gcsfs (etils.epath, orbax) and google-cloud-storage
        TENSORSTORE_GCS_HTTP_URL=url,  # tensorstore (activation cache, orbax arrays)
        # gcsfs's extended client asks the storage-control gRPC API for the bucket type; the
        # emulator does not serve it (each call would wait for a 60 s timeout).
        GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
        GOOGLE_CLOUD_PROJECT="test",
    )
    return server, env
