"""Build GGUF byte strings field by field with struct, so tests can forge any header."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

UINT32, FLOAT32, STRING, ARRAY, UINT64 = 4, 6, 8, 9, 10


def gstr(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def kv_u32(key: str, value: int) -> bytes:
    return gstr(key) + struct.pack("<II", UINT32, value)


def kv_str(key: str, value: str | bytes) -> bytes:
    return gstr(key) + struct.pack("<I", STRING) + gstr(value)


def kv_array_u32(key: str, values: list[int]) -> bytes:
    return gstr(key) + struct.pack("<IIQ", ARRAY, UINT32, len(values)) + b"".join(struct.pack("<I", v) for v in values)


def tensor_info(name: str, ne: list[int], ggml_type: int = 0, offset: int = 0) -> bytes:
    return gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne) + struct.pack("<IQ", ggml_type, offset)


@dataclass
class GGUFBytes:
    kvs: list[bytes] = field(default_factory=list)
    infos: list[bytes] = field(default_factory=list)
    data: bytes = b""
    version: int = 3
    n_kv: int | None = None
    n_tensors: int | None = None
    alignment: int = 32

    def build(self) -> bytes:
        head = b"GGUF" + struct.pack("<IQQ", self.version,
                                     len(self.infos) if self.n_tensors is None else self.n_tensors,
                                     len(self.kvs) if self.n_kv is None else self.n_kv)
        head += b"".join(self.kvs) + b"".join(self.infos)
        if self.infos:
            head += b"\0" * (-len(head) % self.alignment)
        return head + self.data


def valid_model() -> GGUFBytes:
    """Two f32 tensors, properly aligned: the baseline every hostile case mutates."""
    return GGUFBytes(
        kvs=[kv_str("general.architecture", "llama"), kv_u32("llama.block_count", 1)],
        infos=[tensor_info("a.weight", [8, 2], 0, 0), tensor_info("b.weight", [8], 0, 64)],
        data=bytes(range(64)) + bytes(32),
    )
