"""Value types shared by the index, the re-ranker, the extractors and the stream runtime."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from l2g_core.checks import check_array
from l2g_core.errors import ShapeError

__all__ = ["FloatArray", "FrameFeatures", "FrameKey", "FrameSource", "Hit", "l2_normalize"]

FloatArray = npt.NDArray[np.float32]


def l2_normalize(x: FloatArray, axis: int = -1) -> FloatArray:
    """Return ``x`` scaled to unit L2 norm along ``axis`` (zero rows stay zero); float32."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    out: FloatArray = (x / np.maximum(norm, 1e-12)).astype(np.float32, copy=False)
    return out


@dataclass(frozen=True)
class FrameSource:
    """Where an indexed frame's pixels can be read again (an index keeps features, never pixels).

    Attributes:
        partition: partition of the log record that carried the frame (in the service: a video partition).
        offset: offset of that record.
        index: position of the frame among the record's decoded frames (0-based, every decoded frame counted).
        width, height: size in pixels of the frame as indexed (the pixel grid of its keypoints); 0 when unknown.
    """

    partition: int
    offset: int
    index: int
    width: int = 0
    height: int = 0

    def __post_init__(self) -> None:
        for name in ("partition", "offset", "index", "width", "height"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise ShapeError(f"FrameSource.{name} must be a non-negative integer, got {value!r}")


@dataclass(frozen=True, order=True)
class FrameKey:
    """Identity of one indexed frame.

    Attributes:
        camera_id: the camera (stream) the frame came from; non-empty, at most 256 characters.
        timestamp: event time of the frame, seconds since the Unix epoch (float).
        sequence: frame number within the camera's stream (a recording); with ``camera_id`` and ``timestamp`` it
            identifies the frame (:attr:`dedup_key`).
        source: where the frame's pixels can be read again (None: unknown). Not part of the identity: it takes no
            part in equality, ordering or hashing.
    """

    camera_id: str
    timestamp: float
    sequence: int
    source: FrameSource | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.camera_id, str) or not self.camera_id or len(self.camera_id) > 256:
            raise ShapeError(f"camera_id must be a non-empty string of at most 256 chars, got {self.camera_id!r}")
        if not isinstance(self.timestamp, (int, float)) or not math.isfinite(self.timestamp):
            raise ShapeError(f"timestamp must be a finite number of seconds, got {self.timestamp!r}")
        if not isinstance(self.sequence, (int, np.integer)) or self.sequence < 0:
            raise ShapeError(f"sequence must be a non-negative integer, got {self.sequence!r}")

    @property
    def dedup_key(self) -> tuple[str, int, int]:
        """``(camera_id, sequence, event time in microseconds)``: two frames with the same dedup key are the same frame.

        The event time is part of the identity: a second recording of a camera numbers its frames from 0 again, and
        must never be dropped as a duplicate of the first (a replay of the same chunk has the same times).
        """
        return (self.camera_id, int(self.sequence), round(self.timestamp * 1e6))


@dataclass(frozen=True, eq=False)
class FrameFeatures:
    """Local and global features of one frame.

    Attributes:
        descriptors: ``(N, D)`` float32, each row L2-normalised (N may be 0).
        keypoints: ``(N, 2)`` float32, ``(x, y)`` pixel coordinates in the extractor's input frame.
        scores: ``(N,)`` float32 detection strengths, higher is better.
        global_descriptor: ``(G,)`` float32, L2-normalised.
        image_size: ``(height, width)`` of the frame the keypoints refer to.
    """

    descriptors: FloatArray
    keypoints: FloatArray
    scores: FloatArray
    global_descriptor: FloatArray
    image_size: tuple[int, int] = field(default=(0, 0))

    def __post_init__(self) -> None:
        dims: dict[str, int] = {}
        check_array("descriptors", self.descriptors, ("N", "D"), np.float32, finite=True, dims=dims)
        check_array("keypoints", self.keypoints, ("N", 2), np.float32, finite=True, dims=dims)
        check_array("scores", self.scores, ("N",), np.float32, finite=True, dims=dims)
        check_array("global_descriptor", self.global_descriptor, ("G",), np.float32, finite=True)
        if self.global_descriptor.shape[0] == 0:
            raise ShapeError("global_descriptor must not be empty")
        if self.descriptors.shape[1] == 0:
            raise ShapeError("descriptors must have at least one dimension")

    @classmethod
    def create(
        cls,
        descriptors: npt.ArrayLike,
        keypoints: npt.ArrayLike,
        scores: npt.ArrayLike,
        global_descriptor: npt.ArrayLike,
        image_size: tuple[int, int] = (0, 0),
    ) -> FrameFeatures:
        """Build features from array-likes: casts to float32 and L2-normalises the descriptors."""
        desc = np.asarray(descriptors, dtype=np.float32)
        if desc.ndim == 2 and desc.shape[0]:
            desc = l2_normalize(desc)
        glob = np.asarray(global_descriptor, dtype=np.float32)
        if glob.ndim == 1 and glob.size:
            glob = l2_normalize(glob)
        return cls(
            descriptors=np.ascontiguousarray(desc),
            keypoints=np.ascontiguousarray(np.asarray(keypoints, dtype=np.float32)),
            scores=np.ascontiguousarray(np.asarray(scores, dtype=np.float32)),
            global_descriptor=np.ascontiguousarray(glob),
            image_size=(int(image_size[0]), int(image_size[1])),
        )

    @property
    def num_features(self) -> int:
        """Number of local features N."""
        return int(self.descriptors.shape[0])

    def top(self, n: int) -> FrameFeatures:
        """The ``n`` strongest local features (by score), in descending score order."""
        order = np.argsort(-self.scores, kind="stable")[:n]
        if order.shape[0] == self.num_features and bool(np.all(order == np.arange(order.shape[0]))):
            return self
        return FrameFeatures(
            self.descriptors[order], self.keypoints[order], self.scores[order], self.global_descriptor,
            self.image_size,
        )


@dataclass(frozen=True)
class Hit:
    """One ranked answer to a query.

    Attributes:
        key: the matching frame.
        score: the final score of the mode that ranked it (higher is better).
        stage_scores: score per stage, e.g. ``{"local": 0.41, "global": 0.73, "l2g": 0.65}``.
    """

    key: FrameKey
    score: float
    stage_scores: dict[str, float] = field(default_factory=dict)
