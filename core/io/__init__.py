"""HF checkpoint files, read and written without a framework: safetensors, pytorch_model.bin, flax msgpack.

Every format is read by memory-mapping the file and handing out numpy views of it, so opening a checkpoint
reads only its headers and a tensor's bytes are paged in when it is used. Every header field is checked
before a view is made, and a bad one raises :class:`CheckpointError` naming the file and the tensor: a view
never reaches outside the bytes its tensor owns. Writers write one tensor at a time (a :class:`Deferred`
tensor, e.g. a transposed view of the source, is made only then; an untouched one is written straight from
the source's mapping), so converting a checkpoint never holds two copies of it. A checkpoint directory is
written into a staging folder and its files are moved into place only once all of them are complete; the
move removes every other weights file there, so a directory tandem wrote holds exactly one checkpoint.

The formats, as HF writes them (one private module each):

- ``model.safetensors`` (``_safetensors``): an 8-byte little-endian header length, a JSON header (name ->
  dtype, shape, byte range; ``__metadata__``), then the raw bytes. HF PyTorch writes metadata ``format: pt``
  and torch keys; HF Flax writes ``format: flax`` and its param paths joined with ``.``.
- ``pytorch_model.bin`` (``_torch_bin``, its pickle in ``_torch_pickle``): ``torch.save`` of the state dict,
  a zip holding ``data.pkl`` (a pickle whose tensors refer to storages by key) and one ``data/<key>`` record
  of raw bytes per storage. Torch < 1.6 wrote the legacy layout instead: consecutive pickles followed by the
  storages' bytes. The pickle is read by a restricted unpickler that knows the few torch globals a state
  dict uses and refuses anything else, so reading a ``.bin`` never runs code from the file.
- ``flax_model.msgpack`` (``_msgpack``): ``flax.serialization.to_bytes`` of the params tree, a msgpack map of
  maps whose leaves are ext type 1 payloads, each itself msgpack of ``(shape, dtype name, raw bytes)``.
  Leaves over 2**30 bytes are split into a ``__msgpack_chunked_array__`` map.
- Sharded (``_sharding``): ``<name>.index.json`` with ``weight_map`` (tensor name -> shard file) and shards
  named ``model-00001-of-00003.safetensors``, ``pytorch_model-00001-of-00003.bin``,
  ``flax_model-00001-of-00003.msgpack``; msgpack index names are param paths joined with ``/``.

``_directory`` reads and writes a whole checkpoint directory, ``_staging`` moves a written one into place,
and ``_tensors`` holds what they share (dtypes, deferred tensors, views, streamed writes).
"""

from ._directory import Checkpoint, checkpoint_directory, detect_format, read_checkpoint, write_checkpoint
from ._sharding import FORMATS, FormatFiles, parse_size
from ._tensors import CheckpointError, Deferred, Format, Layout, Tensor, float_dtype, is_floating, nbytes

__all__ = [
    "FORMATS",
    "Checkpoint",
    "CheckpointError",
    "Deferred",
    "Format",
    "FormatFiles",
    "Layout",
    "Tensor",
    "checkpoint_directory",
    "detect_format",
    "float_dtype",
    "is_floating",
    "nbytes",
    "parse_size",
    "read_checkpoint",
    "write_checkpoint",
]
