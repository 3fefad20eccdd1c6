"""Where things live on disk: the corpus layout (auto_avsr / Llama-AVSR convention), the run
folder of a training, and the recipes shipped inside the package. Every path of these kinds
is built here, so the layout is written down once."""

from __future__ import annotations

import os
from pathlib import Path

from avsr.errors import AvsrError

SPLITS = ("train", "val", "test")
NOISE_KINDS = ("babble", "white", "pink")
RECIPES = Path(__file__).resolve().parent / "recipes"


def labels_csv(root: str | os.PathLike, corpus: str, split: str) -> Path:
    """<root>/labels/<corpus>_<split>.csv: dataset,rel_path,n_video_frames,transcript rows."""
    return Path(root) / "labels" / f"{corpus}_{split}.csv"


def noise_wav(root: str | os.PathLike, corpus: str, kind: str = "babble") -> Path:
    """<root>/noise/<corpus>_<kind>.wav, 16 kHz (babble, white or pink)."""
    return Path(root) / "noise" / f"{corpus}_{kind}.wav"


def final_checkpoint(run: str | os.PathLike) -> Path:
    """<run>/checkpoints/last: the trainable weights + config written at the end of training."""
    return Path(run) / "checkpoints" / "last"


def resume_file(run: str | os.PathLike) -> Path:
    """<run>/resume/state.safetensors: the state a resumed run continues from (avsr.training.resume)."""
    return Path(run) / "resume" / "state.safetensors"


def recipe(name_or_path: str | os.PathLike) -> Path:
    """A recipe file: a path that exists, or the name of one shipped with avsr ('quickstart',
    'llama_smop_1b_dedr.yaml'), so an installed package finds its recipes too."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = RECIPES / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml")))
    raise AvsrError(f"recipe not found: {name_or_path} (neither a file nor a recipe shipped with avsr: {names})")
