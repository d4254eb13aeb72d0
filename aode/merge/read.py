"""Streaming model reading for merging (paper III-C needs N full models; we hold one tensor).

* :class:`SafetensorsFile`: a minimal safetensors reader. It parses the header (8-byte
  little-endian length + JSON) and reads one tensor, or a range of its elements, with
  ``seek`` + ``readinto`` into a fresh torch buffer: plain reads, no mmap, so the resident
  memory of a merge does not accumulate the files it reads.
* :func:`open_model`: a model folder as a tensor source (:class:`ModelSource`):
  ``model.safetensors``, sharded ``model-0000x-of-0000y.safetensors`` +
  ``model.safetensors.index.json``, legacy ``pytorch_model.bin`` (loaded whole with
  ``torch.load(weights_only=True)``, with a warning), or a peft LoRA adapter folder
  (``adapter_config.json`` + ``adapter_model.safetensors``) whose adapters are folded into
  its base model's weights on the fly (paper III-B: ``W + (alpha / r) B A``). No checkpoint
  ever runs code. Which files a model folder holds is :mod:`aode.model_folder`'s business.

The streaming writer is :mod:`aode.merge.write`; the checks between members
:mod:`aode.merge.checks`.
"""

import json
import logging
import math
import os
import re
import struct
import threading
from collections import namedtuple
from collections.abc import Sequence

import torch

from aode.lora import lora_delta
from aode.model_folder import find_weight_files
from aode.model_folder import is_lora_folder
from aode.model_folder import read_config_json

logger = logging.getLogger(__name__)

__all__ = [
    "TensorInfo",
    "SafetensorsFile",
    "ModelSource",
    "open_model",
    "DTYPES",
    "DTYPE_NAMES",
]

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "C64": torch.complex64,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

TensorInfo = namedtuple("TensorInfo", ["dtype", "shape"])

_MAX_HEADER = 100 * 1024 * 1024


def shape_numel(shape: Sequence[int]) -> int:
    """Number of elements of a tensor of this shape."""
    return math.prod(shape)


def dtype_itemsize(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``."""
    return dtype.itemsize


def _pread_exact(fd, buf, offset, path, what):
    # Positional reads share no file position, so the driver's read-ahead thread and the
    # merging thread (naming the member behind a NaN) can read one file at once.
    view = memoryview(buf).cast("B")
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if not n:
            raise OSError(f"{path}: truncated file while reading {what} ({got} of {len(view)} bytes)")
        got += n


class SafetensorsFile:
    """One ``.safetensors`` file, read tensor by tensor with positional reads (no mmap:
    a mapping would count every page read in the process's memory)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise OSError(f"{self.path}: not a safetensors file (shorter than 8 bytes)")
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > min(_MAX_HEADER, size - 8):
                raise OSError(f"{self.path}: not a safetensors file (header length {header_len})")
            header = json.loads(f.read(header_len))
        self.metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + header_len
        data_len = size - self._data_start
        self._entries = {}
        for name, meta in header.items():
            try:
                dtype = DTYPES[meta["dtype"]]
            except KeyError:
                raise OSError(f"{self.path}: tensor {name!r} has unsupported dtype {meta['dtype']!r}") from None
            shape = tuple(int(s) for s in meta["shape"])
            begin, end = (int(x) for x in meta["data_offsets"])
            nbytes = shape_numel(shape) * dtype_itemsize(dtype)
            if end - begin != nbytes or end > data_len or begin < 0:
                raise OSError(
                    f"{self.path}: tensor {name!r} has inconsistent offsets "
                    f"{[begin, end]} for {meta['dtype']} {list(shape)} "
                    f"(data section {data_len} bytes)"
                )
            self._entries[name] = (dtype, shape, begin)
        self._order = sorted(self._entries, key=lambda n: self._entries[n][2])
        self._file = None
        self._open_lock = threading.Lock()

    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return list(self._order)

    def __contains__(self, name):
        return name in self._entries

    def info(self, name: str) -> TensorInfo:
        dtype, shape, _ = self._entries[name]
        return TensorInfo(dtype, shape)

    def read(
        self, name: str, start: int | None = None, stop: int | None = None, buffer: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The tensor ``name``; with ``start``/``stop``, that range of its flattened elements.

        ``buffer``: an optional uint8 tensor to read into when it is large enough (the
        result is then a view of it, valid until the buffer is reused).
        """
        dtype, shape, begin = self._entries[name]
        numel = shape_numel(shape)
        whole = start is None and stop is None
        start = 0 if start is None else start
        stop = numel if stop is None else stop
        if not 0 <= start <= stop <= numel:
            raise IndexError(f"{name}: element range [{start}, {stop}) outside [0, {numel})")
        size = dtype_itemsize(dtype)
        nbytes = (stop - start) * size
        if buffer is not None and buffer.numel() >= nbytes:
            buf = buffer[:nbytes]
        else:
            buf = torch.empty(nbytes, dtype=torch.uint8)
        _pread_exact(self._fd(), buf.numpy(), self._data_start + begin + start * size, self.path, repr(name))
        out = buf.view(dtype)
        return out.reshape(shape) if whole else out

    def _fd(self):
        with self._open_lock:  # two threads may read the first tensor at once
            if self._file is None:
                self._file = open(self.path, "rb", buffering=0)
            return self._file.fileno()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _torch_load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


class ModelSource:
    """A model's tensors by name: ``infos`` (ordered name -> TensorInfo), ``read``."""

    def __init__(self, path, label, config):
        self.path = path
        self.label = label
        self.config = config
        self.infos = {}
        self.model_folder = path  # where config.json / processor files live

    def read(
        self, name: str, start: int | None = None, stop: int | None = None, buffer: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Tensor ``name`` (or elements [start, stop) of it, flattened); ``buffer``: an
        optional uint8 scratch tensor the source may read into (the result may be a view)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class SafetensorsSource(ModelSource):
    def __init__(self, path, label, config, files):
        super().__init__(path, label, config)
        self.files = [SafetensorsFile(p) for p in files]
        self._where = {}
        for sf in self.files:
            for name in sf.keys():
                if name in self._where:
                    raise OSError(f"{label}: tensor {name!r} is in two shards ({self._where[name].path}, {sf.path})")
                self._where[name] = sf
                self.infos[name] = sf.info(name)

    def read(
        self, name: str, start: int | None = None, stop: int | None = None, buffer: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self._where[name].read(name, start, stop, buffer)

    def close(self) -> None:
        for sf in self.files:
            sf.close()


class StateDictSource(ModelSource):
    """A legacy ``.bin`` checkpoint, loaded whole (weights_only: no code runs)."""

    def __init__(self, path, label, config, files):
        super().__init__(path, label, config)
        logger.warning(
            "%s: legacy pytorch_model.bin is loaded whole into memory "
            "(not streamed); convert it to safetensors for large merges",
            label,
        )
        self.state = {}
        for p in files:
            part = _torch_load(p)
            for name, t in part.items():
                if not isinstance(t, torch.Tensor):
                    raise OSError(f"{p}: entry {name!r} is not a tensor")
                self.state[name] = t
        self.infos = {n: TensorInfo(t.dtype, tuple(t.shape)) for n, t in self.state.items()}

    def read(
        self, name: str, start: int | None = None, stop: int | None = None, buffer: torch.Tensor | None = None
    ) -> torch.Tensor:
        t = self.state[name]
        if start is None and stop is None:
            return t
        return t.reshape(-1)[start:stop]


def _resolve_adapter_base(adapter_dir, base_ref):
    if not base_ref:
        raise ValueError(f"LoRA adapter {adapter_dir}: adapter_config.json has no base_model_name_or_path")
    candidates = [base_ref] if os.path.isabs(base_ref) else [os.path.join(adapter_dir, base_ref), base_ref]
    for c in candidates:
        if os.path.isdir(c):
            return os.path.normpath(c)
    raise ValueError(
        f"LoRA adapter {adapter_dir}: its base {base_ref!r} is not a local folder "
        f"(tried {candidates}); hub ids are not downloaded, give a local model folder"
    )


def _pattern_value(patterns, module, default):
    # peft's rank_pattern / alpha_pattern: key matched as a regex against the module name.
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


_LORA_KEY = re.compile(
    r"^base_model\.model\.(.+)\.(lora_A|lora_B|lora_embedding_A|"
    r"lora_embedding_B)(?:\.[A-Za-z0-9_-]+)?(?:\.weight)?$"
)


class LoraSource(ModelSource):
    """A peft LoRA adapter folder, seen as the full model ``W + scaling * B A``.

    The base is ``base_model_name_or_path`` of adapter_config.json (absolute, else relative
    to the adapter folder, else to the working directory). scaling = lora_alpha / r
    (``use_rslora``: lora_alpha / sqrt(r)); peft's ``rank_pattern``/``alpha_pattern`` and
    ``fan_in_fan_out`` are honoured; ``modules_to_save`` copies replace the base tensors.
    DoRA is not supported. Adapted tensors are returned in float32.
    """

    def __init__(self, path, label):
        with open(os.path.join(path, "adapter_config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        if cfg.get("use_dora"):
            raise ValueError(f"{label}: DoRA adapters are not supported; merge them first")
        base_dir = _resolve_adapter_base(path, cfg.get("base_model_name_or_path"))
        self.base = open_model(base_dir, label=f"{label} (LoRA base {base_dir})")
        if isinstance(self.base, LoraSource):
            raise ValueError(f"{label}: the base of a LoRA adapter is itself an adapter")
        super().__init__(path, f"{label} (LoRA on {base_dir})", self.base.config)
        self.model_folder = self.base.model_folder
        self.infos = dict(self.base.infos)
        st = os.path.join(path, "adapter_model.safetensors")
        if os.path.isfile(st):
            with SafetensorsFile(st) as sf:
                tensors = {n: sf.read(n) for n in sf.keys()}
        elif os.path.isfile(os.path.join(path, "adapter_model.bin")):
            tensors = _torch_load(os.path.join(path, "adapter_model.bin"))
        else:
            raise FileNotFoundError(f"{label}: no adapter_model.safetensors in {path}")
        pairs, self.replaced = {}, {}
        for key, t in tensors.items():
            m = _LORA_KEY.match(key)
            if m:
                module, part = m.group(1), m.group(2)
                pairs.setdefault(module, {})[part] = t
                continue
            name = key[len("base_model.model.") :] if key.startswith("base_model.model.") else key
            name = re.sub(r"\.modules_to_save(\.[A-Za-z0-9_-]+)?\.", ".", name)
            name = re.sub(r"\.modules_to_save\.[A-Za-z0-9_-]+$", "", name)
            if name not in self.infos:
                raise ValueError(f"{label}: adapter tensor {key!r} matches no tensor of the base model {base_dir}")
            if tuple(t.shape) != tuple(self.infos[name].shape):
                raise ValueError(
                    f"{label}: adapter tensor {key!r} has shape {list(t.shape)}, "
                    f"base tensor {name!r} has {list(self.infos[name].shape)}"
                )
            self.replaced[name] = t
        r_default, alpha_default = cfg.get("r", 8), cfg.get("lora_alpha", 8)
        self.adapted = {}
        for module, parts in pairs.items():
            emb = "lora_embedding_A" in parts or "lora_embedding_B" in parts
            a = parts.get("lora_embedding_A" if emb else "lora_A")
            b = parts.get("lora_embedding_B" if emb else "lora_B")
            if a is None or b is None:
                raise ValueError(f"{label}: module {module!r} has only one of lora_A/lora_B")
            target = f"{module}.weight"
            if target not in self.infos:
                raise ValueError(
                    f"{label}: adapter module {module!r} has no weight {target!r} in the base model {base_dir}"
                )
            r = _pattern_value(cfg.get("rank_pattern"), module, r_default)
            alpha = _pattern_value(cfg.get("alpha_pattern"), module, alpha_default)
            if a.shape[0] != r or b.shape[1] != r:
                raise ValueError(
                    f"{label}: {module!r} has lora_A {list(a.shape)} and lora_B "
                    f"{list(b.shape)}; adapter_config.json says rank {r}"
                )
            scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
            transpose = emb or bool(cfg.get("fan_in_fan_out"))
            self.adapted[target] = (a, b, scaling, transpose)
        logger.info("%s: %d adapted tensors, %d replaced", self.label, len(self.adapted), len(self.replaced))
        self._cache = (None, None)

    def _delta(self, name):
        # One tuple read and one written: the driver's reading thread and the merging thread
        # (naming the member behind a NaN) may both get here.
        cached_name, cached = self._cache
        if cached_name != name:
            a, b, scaling, transpose = self.adapted[name]
            shape = self.infos[name].shape
            if transpose:
                rev = tuple(reversed(shape)) if len(shape) == 2 else shape
                d = lora_delta(a, b, scaling, rev)
                d = d.T.contiguous() if len(shape) == 2 else d
            else:
                d = lora_delta(a, b, scaling, shape)
            cached = d
            self._cache = (name, d)
        return cached

    def read(
        self, name: str, start: int | None = None, stop: int | None = None, buffer: torch.Tensor | None = None
    ) -> torch.Tensor:
        if name in self.replaced:
            t = self.replaced[name]
            return t if start is None and stop is None else t.reshape(-1)[start:stop]
        base = self.base.read(name, start, stop, buffer)
        if name not in self.adapted:
            return base
        d = self._delta(name)
        if start is not None or stop is not None:
            d = d.reshape(-1)[start:stop]
        return base.float() + d

    def close(self) -> None:
        self.base.close()


def open_model(path: str | os.PathLike, label: str | None = None) -> ModelSource:
    """A model folder, LoRA adapter folder or hub id (resolved through the Hugging Face cache
    as ``from_pretrained`` does) as a :class:`ModelSource`."""
    from aode.models import resolve_model_folder

    label = label or os.fspath(path)
    path = resolve_model_folder(path)
    if is_lora_folder(path):
        return LoraSource(path, label)
    kind, files = find_weight_files(path)
    config = read_config_json(path)
    if config is None:
        logger.warning("%s: no config.json; architecture checks skipped for it", label)
    if kind == "safetensors":
        return SafetensorsSource(path, label, config, files)
    return StateDictSource(path, label, config, files)
