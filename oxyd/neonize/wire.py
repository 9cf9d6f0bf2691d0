"""The engine host's wire format: length-prefixed msgpack frames over a pipe.

A frame is a 4-byte big-endian length and one msgpack map. Values are plain data; three
msgpack extension types carry what plain msgpack would flatten, so that any frozen dataclass
of an oxyd module (oxyd.model, oxyd.outgoing, ...) crosses the pipe by its qualified class name
(`oxyd.model:Message`) with no per-class code or registration:

  EXT_OBJECT  a dataclass: ["module:Class", [field values in declaration order]]
  EXT_TUPLE   a tuple (model fields are tuples; msgpack would hand back lists)
  EXT_ENUM    a str enum member: ["module:Class", value]

Frames (`op` says which):
  {"op": "call", "id", "tenant", "method", "args", "kwargs"}  parent -> host
  {"op": "cancel", "id"}                                      parent -> host
  {"op": "result", "id", "value"} / {"op": "error", "id", "type", "message", "attrs"}
  {"op": "events", "items": [[tenant, event], ...]}           host -> parent, in order
"""

from __future__ import annotations

import builtins
import dataclasses
import enum
import importlib
import struct
from typing import Any

import msgpack

from oxyd import engine as engine_module
from oxyd import model as model_module

EXT_OBJECT = 1
EXT_TUPLE = 2
EXT_ENUM = 3
HEADER = struct.Struct(">I")
# A history sync can be large; a frame past this is a bug or a corrupt stream, not data.
MAX_FRAME_BYTES = 256 * 1024 * 1024
# Where class names are looked up on the way back: the plain-data vocabulary of the engine seam.
_MODULES = (model_module, engine_module)


class WireError(Exception):
    """The stream is corrupt or names something this side does not know (a version skew)."""


class RemoteError(Exception):
    """An exception in the host whose type is neither an engine error nor a builtin one: a bug
    over there, reported here with its type name."""


# Per-class caches: the event stream encodes and decodes thousands of objects a second.
_FIELDS: dict[type, tuple[str, tuple[str, ...]]] = {}
_CLASSES: dict[str, Any] = {}


def _lookup(name: str) -> Any:
    """The class a wire name stands for: `module:QualName` of an oxyd module (imported on first
    use: new plain-data classes need no registration), or a bare name in model/engine."""
    cls = _CLASSES.get(name)
    if cls is not None:
        return cls
    module, _, qualname = name.rpartition(":")
    if module:
        if module != "oxyd" and not module.startswith("oxyd."):
            raise WireError(f"type {name!r} is not oxyd's")
        try:
            obj: Any = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError):
            raise WireError(f"unknown type {name!r} on the wire") from None
        _CLASSES[name] = obj
        return obj
    for mod in _MODULES:
        obj = getattr(mod, name, None)
        if obj is not None:
            _CLASSES[name] = obj
            return obj
    raise WireError(f"unknown type {name!r} on the wire")


def _wire_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _default(obj: Any) -> Any:
    spec = _FIELDS.get(type(obj))
    if spec is not None:
        name, fields = spec
        return msgpack.ExtType(EXT_OBJECT, pack([name, [getattr(obj, f) for f in fields]]))
    if isinstance(obj, tuple):
        return msgpack.ExtType(EXT_TUPLE, pack(list(obj)))
    if isinstance(obj, enum.Enum):
        return msgpack.ExtType(EXT_ENUM, pack([_wire_name(type(obj)), obj.value]))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        names = tuple(f.name for f in dataclasses.fields(obj))
        _FIELDS[type(obj)] = (_wire_name(type(obj)), names)
        return _default(obj)
    if isinstance(obj, str | int | float | bytes):  # subclasses (strict_types sends them here)
        for base in (str, bytes, int, float):  # bool is an int: keep it first-class below
            if isinstance(obj, base):
                return base(obj)
    if isinstance(obj, bytearray | memoryview):
        return bytes(obj)
    raise TypeError(f"cannot send a {type(obj).__name__} over the engine host pipe")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_TUPLE:
        return tuple(unpack(data))
    if code == EXT_OBJECT:
        name, values = unpack(data)
        cls = _lookup(name)
        if not dataclasses.is_dataclass(cls):
            raise WireError(f"{name!r} is not a dataclass")
        return cls(*values)
    if code == EXT_ENUM:
        name, value = unpack(data)
        return _lookup(name)(value)
    return msgpack.ExtType(code, data)


def pack(obj: Any) -> bytes:
    # strict_types: tuples and subclasses of str/int reach _default instead of being flattened.
    return msgpack.packb(obj, default=_default, strict_types=True, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


def frame(obj: dict[str, Any]) -> bytes:
    body = pack(obj)
    return HEADER.pack(len(body)) + body


_PLAIN = (str, int, float, bool, type(None))


def error_frame(call_id: int, exc: BaseException) -> bytes:
    # Plain attributes travel too (Refused.status, SendRejected.code).
    attrs = {k: v for k, v in vars(exc).items() if isinstance(v, _PLAIN)}
    return frame(
        {
            "op": "error",
            "id": call_id,
            "type": type(exc).__name__,
            "message": str(exc)[:2000],
            "attrs": attrs,
        }
    )


def exception(type_name: str, message: str, attrs: dict[str, Any] | None = None) -> BaseException:
    """Rebuild an exception from the host: engine errors (EngineError, NotConnected and any
    other Exception subclass in oxyd.engine) and builtin ones keep their type and attributes."""
    cls = getattr(engine_module, type_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = getattr(builtins, type_name, None)
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            return RemoteError(f"{type_name}: {message}")
    try:
        exc = cls(message)
        for k, v in (attrs or {}).items():
            setattr(exc, k, v)
        return exc
    except Exception:
        return RemoteError(f"{type_name}: {message}")


class Reader:
    """Splits a byte stream into frames (feed what arrives, take whole frames out)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self._buf += data
        out = []
        while len(self._buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buf)
            if size > MAX_FRAME_BYTES:
                raise WireError(f"frame of {size} bytes")
            end = HEADER.size + size
            if len(self._buf) < end:
                break
            out.append(unpack(bytes(self._buf[HEADER.size : end])))
            del self._buf[:end]
        return out
