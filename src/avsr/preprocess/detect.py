"""Face landmark detectors: one interface, and mediapipe's legacy face mesh behind it.

A detector maps an RGB frame to the faces in it, each with landmarks in pixels, and says
which of its landmarks alignment uses (`LandmarkScheme`): stable points with their place on
the reference face, and the lip points whose mean is the mouth centre. Adding a detector
(e.g. a 68-point one) means writing `detect` and its scheme; tracking, alignment and
cropping stay the same.
"""

from __future__ import annotations

import ctypes
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from avsr.errors import AvsrError


@dataclass(frozen=True)
class LandmarkScheme:
    """Which landmarks alignment uses, and where the stable ones sit on the reference face."""

    name: str
    stable: tuple[int, ...]  # landmark indices aligned onto `reference`
    reference: np.ndarray  # (len(stable), 2) reference positions in ROI pixels (x right, y down)
    lips: tuple[int, ...]  # landmark indices whose mean is the mouth centre


@dataclass
class Face:
    landmarks: np.ndarray  # (N, 2) float32 pixels (x, y) in the frame
    score: float = 1.0

    @property
    def size(self) -> float:
        """Area of the landmarks' bounding box: the largest face is the speaker."""
        span = self.landmarks.max(axis=0) - self.landmarks.min(axis=0)
        return float(span[0] * span[1])


class Detector(Protocol):
    scheme: LandmarkScheme

    def detect(self, frame: np.ndarray) -> list[Face]:
        """Faces in one (H, W, 3) uint8 RGB frame, any order (none: an empty list)."""
        ...


# The mediapipe canonical face model (mediapipe/modules/face_geometry/data/canonical_face_model.obj,
# centimetres, y up): x, y of the landmarks used here. Frontal view, y flipped to point down.
_CANONICAL = {
    33: (-4.445859, 2.663991), 133: (-1.856432, 2.585245),  # right eye: outer, inner corner
    362: (1.856432, 2.585245), 263: (4.445859, 2.663991),  # left eye: inner, outer corner
    6: (0.0, 2.473255), 197: (0.0, 1.728369), 195: (0.0, 1.059413), 5: (0.0, 0.365669),  # nose ridge
    4: (0.0, -0.463170),  # nose tip
}
# Scale: outer eye corners 96 px apart (8.89 cm), so the canonical mouth (corners 61-291, 4.91 cm)
# is 53 px wide, as the synthetic corpus draws it (2 x mean mouth_half_width of avsr.synth.lips).
_PX_PER_CM = 96.0 / (2 * 4.445859)
MEDIAPIPE_LIPS = (0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181, 185,
                  191, 267, 269, 270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405,
                  409, 415)  # mp.solutions.face_mesh.FACEMESH_LIPS: outer and inner lip contours
MEDIAPIPE_SCHEME = LandmarkScheme(
    name="mediapipe-face-mesh-468",
    stable=tuple(_CANONICAL),
    reference=np.array([(x, -y) for x, y in _CANONICAL.values()], np.float32) * _PX_PER_CM,
    lips=MEDIAPIPE_LIPS,
)


@contextmanager
def _quiet_stderr():
    """Silence the C++ lines mediapipe's graph prints on fd 2 while it starts (absl logging,
    which GLOG_minloglevel does not reach); Python exceptions still propagate."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="SymbolDatabase.GetPrototype")  # protobuf, per call
                yield
    finally:
        ctypes.CDLL(None).fflush(None)  # C stdio may hold some of them in its buffer
        os.dup2(saved, 2)
        os.close(saved)


class MediaPipeFaceMesh:
    """mediapipe's legacy face mesh (468 landmarks; models bundled in mediapipe 0.10.14, offline).

    Video mode: it re-detects only when tracking is lost, so one instance is for one clip.
    `max_faces` faces are tracked so that the largest can be kept.
    """

    scheme = MEDIAPIPE_SCHEME

    def __init__(self, max_faces: int = 2, min_confidence: float = 0.5):
        os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's C++ INFO/WARNING lines
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            import mediapipe as mp
        except ImportError:
            raise AvsrError("face detection needs mediapipe 0.10.14: pip install avsr[video]") from None
        self._options = dict(static_image_mode=False, max_num_faces=max_faces, refine_landmarks=False,
                             min_detection_confidence=min_confidence, min_tracking_confidence=min_confidence)
        self._make, self._mesh = mp.solutions.face_mesh.FaceMesh, None

    def detect(self, frame: np.ndarray) -> list[Face]:
        h, w = frame.shape[:2]
        if self._mesh is None:  # made and started with the first frame, while its start-up lines are silenced
            with _quiet_stderr():
                self._mesh = self._make(**self._options)
                result = self._mesh.process(np.ascontiguousarray(frame))
        else:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="SymbolDatabase.GetPrototype")
                result = self._mesh.process(np.ascontiguousarray(frame))
        faces = []
        for face in result.multi_face_landmarks or []:
            xy = np.array([(p.x, p.y) for p in face.landmark], np.float32)  # (468, 2) normalised
            faces.append(Face(xy * np.array([w, h], np.float32)))
        return faces

    def close(self) -> None:
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None
