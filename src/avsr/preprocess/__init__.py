"""Raw recordings -> what the model reads: 96x96 gray mouth ROIs at 25 fps and 16 kHz mono audio
(docs/preprocess.md)."""

from avsr.preprocess.decode import PreprocessError, probe
from avsr.preprocess.detect import Detector, Face, LandmarkScheme, MediaPipeFaceMesh
from avsr.preprocess.pipeline import aligned, preprocess_file, write_pair
from avsr.preprocess.result import Preprocessed

__all__ = ["aligned", "Detector", "Face", "LandmarkScheme", "MediaPipeFaceMesh", "Preprocessed", "PreprocessError",
           "preprocess_file", "probe", "write_pair"]
