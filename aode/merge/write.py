"""The streaming safetensors writer of merged models.

:class:`SafetensorsWriter` computes the header (names, dtypes, shapes, offsets) first and
writes it; then each tensor's bytes, possibly in consecutive chunks, in header order, so
only one (piece of a) tensor is ever in memory. Tensors are laid out like the safetensors
library does (:func:`safetensors_layout`: by element size, largest first, then name) so
every tensor is aligned to its element size.
"""

import json
import os
import struct
from collections.abc import Iterable

import torch

from .read import DTYPE_NAMES
from .read import dtype_itemsize
from .read import shape_numel

__all__ = ["SafetensorsWriter", "safetensors_layout"]


def safetensors_layout(entries: Iterable[tuple[str, torch.dtype, tuple]]) -> list[tuple[str, torch.dtype, tuple]]:
    """Order ``(name, dtype, shape)`` entries as the safetensors library does (aligned)."""
    return sorted(entries, key=lambda e: (-dtype_itemsize(e[1]), e[0]))


class SafetensorsWriter:
    """Streaming safetensors writer: header first, then tensor bytes in header order.

    ``entries`` is a list of ``(name, dtype, shape)`` in the order the tensors will be
    written (use :func:`safetensors_layout` for aligned offsets). Each tensor is given to
    :meth:`write` whole or as consecutive chunks of its flattened elements.
    """

    def __init__(self, path, entries, metadata=None):
        self.path = os.fspath(path)
        header = {}
        self._plan = []
        offset = 0
        for name, dtype, shape in entries:
            if name in header:
                raise ValueError(f"duplicate tensor name {name!r}")
            nbytes = shape_numel(shape) * dtype_itemsize(dtype)
            header[name] = {
                "dtype": DTYPE_NAMES[dtype],
                "shape": [int(s) for s in shape],
                "data_offsets": [offset, offset + nbytes],
            }
            self._plan.append((name, dtype, nbytes))
            offset += nbytes
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        self._file = open(self.path, "wb")
        self._file.write(struct.pack("<Q", len(raw)))
        self._file.write(raw)
        self._index = 0
        self._left = self._plan[0][2] if self._plan else 0
        self._skip_empty()

    def _skip_empty(self):
        while self._index < len(self._plan) and self._left == 0:
            self._index += 1
            if self._index < len(self._plan):
                self._left = self._plan[self._index][2]

    @property
    def expected(self) -> str | None:
        """The name of the tensor the next :meth:`write` must belong to (None when done)."""
        return self._plan[self._index][0] if self._index < len(self._plan) else None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write ``tensor`` (the whole tensor ``name`` or its next chunk)."""
        if tensor.numel() == 0:
            return
        if name != self.expected:
            raise ValueError(f"writer expected tensor {self.expected!r}, got {name!r}")
        dtype = self._plan[self._index][1]
        if tensor.dtype != dtype:
            raise ValueError(f"tensor {name!r}: dtype {tensor.dtype}, header says {dtype}")
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        if data.nbytes > self._left:
            raise ValueError(f"tensor {name!r}: {data.nbytes} bytes written past its end")
        self._file.write(memoryview(data))
        self._left -= data.nbytes
        self._skip_empty()

    def close(self) -> None:
        """Finish the file; fails if a tensor was not written completely."""
        if self._file is None:
            return
        missing = self.expected
        self._file.close()
        self._file = None
        if missing is not None:
            raise ValueError(f"{self.path}: tensor {missing!r} was not written completely")

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
