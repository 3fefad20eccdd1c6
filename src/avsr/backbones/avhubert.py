"""Convert an AV-HuBERT fairseq checkpoint (`*.pt`) into our video encoder folder, once.

`model.video_encoder` may name the `.pt` file itself (converted in memory at every load); the
folder is the faster, fairseq-free form to keep: model.safetensors (float32, our names) and
config.json, which records the source file (sha256 and size), the converter version and the
AV-HuBERT licence, so loading the folder prints the licence notice as loading the file does.

config.json is written last and is the folder's marker (`avsr.backbones.folder`): a folder
converted from the same file by this converter version is complete and left alone; one
converted from another file is refused (remove it to convert again); an interrupted run leaves
nothing that looks complete.
"""

from __future__ import annotations

from pathlib import Path

import torch

from avsr.backbones.folder import BackboneFolder
from avsr.errors import AvsrError
from avsr.io import sha256_file
from avsr.models.avhubert_fairseq import AVHUBERT_LICENCE, FOLDER_SOURCE, CheckpointFormatError
from avsr.models.video_encoder import FOLDER_CONFIG, FOLDER_FORMAT, read_fairseq_checkpoint, write_encoder_folder

CONVERTER_VERSION = 1  # bump when the folder's content changes, so old conversions are redone

FOLDER = BackboneFolder(FOLDER_CONFIG, "an AV-HuBERT encoder folder converted by avsr",
                        identity={"format": FOLDER_FORMAT, "source": FOLDER_SOURCE}, error=AvsrError)


def _owned(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous copy in memory (safetensors refuses views and shared storage), float32 for
    floating tensors so the folder does not depend on the file's dtype."""
    dtype = torch.float32 if tensor.is_floating_point() else tensor.dtype
    return tensor.to(dtype=dtype, memory_format=torch.contiguous_format, copy=True)


def prepare_avhubert(pt_path: str | Path, out_dir: str | Path) -> Path:
    """Write the encoder folder of the AV-HuBERT file `pt_path` at `out_dir` (or return at once
    when it already holds this file's conversion)."""
    pt_path, out_dir = Path(pt_path), Path(out_dir)
    if not pt_path.is_file():  # checked before hashing it
        raise CheckpointFormatError(f"{pt_path}: {'not a file' if pt_path.exists() else 'no such file'}")
    fingerprint = {"source_sha256": sha256_file(pt_path), "source_size": pt_path.stat().st_size,
                   "converter_version": CONVERTER_VERSION}
    if FOLDER.is_complete(out_dir, fingerprint):
        return out_dir
    recorded = FOLDER.read(out_dir)
    if recorded is not None and recorded.get("source_sha256") != fingerprint["source_sha256"]:
        raise AvsrError(f"{out_dir} holds the conversion of another file ({recorded.get('source_file')}, sha256 "
                        f"{str(recorded.get('source_sha256'))[:12]}...); remove it to convert {pt_path} there")
    FOLDER.check_replaceable(out_dir, (pt_path,))  # an older conversion of ours may be replaced, nothing else

    cfg, state, info = read_fairseq_checkpoint(pt_path)
    extra = {"source": FOLDER_SOURCE, "licence": AVHUBERT_LICENCE, "source_file": str(pt_path.resolve()),
             **fingerprint, "avhubert": info}
    with FOLDER.writing(out_dir) as tmp:  # write_encoder_folder writes config.json, the marker, last
        write_encoder_folder(tmp, {k: _owned(v) for k, v in state.items()}, cfg, extra)
    return out_dir
