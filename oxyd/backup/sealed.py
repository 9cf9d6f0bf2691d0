"""The sealed stream: AES-256-GCM over 1 MiB chunks (the STREAM construction).

A 28-byte header, then each chunk sealed with nonce = 7-byte random prefix | chunk counter |
last flag and the header as associated data. Truncation, reordering, a flipped byte or a wrong
key all fail authentication, and an archive never has to fit in memory.
"""

from __future__ import annotations

import io
import os
import struct
import threading
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from oxyd.backup.error import BackupError
from oxyd.backup.key import key_id

MAGIC = b"OXYDBAK\0"
VERSION = 1
CHUNK_BYTES = 1 << 20
HEADER = struct.Struct(">8sB8sI7s")  # magic, version, key id, chunk size, nonce prefix
TAG_BYTES = 16


class SealWriter(io.RawIOBase):
    """Writable file object that encrypts everything written to it into `out`."""

    def __init__(self, out: io.BufferedIOBase, key: bytes, cancel: threading.Event) -> None:
        self._out, self._aead, self._cancel = out, AESGCM(key), cancel
        self._header = HEADER.pack(MAGIC, VERSION, key_id(key), CHUNK_BYTES, os.urandom(7))
        self._prefix = self._header[-7:]
        self._buf = bytearray()
        self._counter = 0
        out.write(self._header)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self._cancel.is_set():
            raise BackupError("backup cancelled")
        self._buf += data
        while len(self._buf) > CHUNK_BYTES:  # strictly more: the final chunk is never full
            self._seal(bytes(self._buf[:CHUNK_BYTES]), last=False)
            del self._buf[:CHUNK_BYTES]
        return len(data)

    def finish(self) -> None:
        self._seal(bytes(self._buf), last=True)
        self._buf.clear()

    def _seal(self, chunk: bytes, *, last: bool) -> None:
        nonce = self._prefix + struct.pack(">IB", self._counter, last)
        self._out.write(self._aead.encrypt(nonce, chunk, self._header))
        self._counter += 1


class OpenReader(io.RawIOBase):
    """Readable file object of the authenticated plaintext of an archive."""

    def __init__(self, f: io.BufferedIOBase, key: bytes) -> None:
        self._f = f
        self._header = f.read(HEADER.size)
        if len(self._header) < HEADER.size or not self._header.startswith(MAGIC):
            raise BackupError("not an oxyd backup archive")
        _, version, archive_key_id, self._chunk, self._prefix = HEADER.unpack(self._header)
        if version != VERSION:
            raise BackupError(f"archive format version {version} is not supported by this oxyd")
        if archive_key_id != key_id(key):
            raise BackupError("wrong backup key: this archive was encrypted with another key")
        if not 1024 <= self._chunk <= 64 << 20:
            raise BackupError("archive header is damaged")
        self._aead = AESGCM(key)
        self._counter = 0
        self._buf = b""
        self._done = False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while not self._done and (n < 0 or len(self._buf) < n):
            self._next_chunk()
        if n < 0:
            n = len(self._buf)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        """Authenticate the rest, up to the final chunk: tar stops reading before the end."""
        while not self._done:
            self._next_chunk()
            self._buf = b""

    def _next_chunk(self) -> None:
        sealed = self._f.read(self._chunk + TAG_BYTES)
        last = len(sealed) < self._chunk + TAG_BYTES
        nonce = self._prefix + struct.pack(">IB", self._counter, last)
        try:
            plain = self._aead.decrypt(nonce, sealed, self._header)
        except InvalidTag:
            raise BackupError(
                "archive failed authentication: it was modified, truncated or damaged"
            ) from None
        self._counter += 1
        self._buf += plain
        self._done = last
