"""The candidate-partial wire format: the only code that knows how stage-1 lists travel as bytes.

A partial carries, per video partition, what :class:`~l2g_core.Transport` says stage 2 can use, with float32 /
float16 values as little-endian raw bytes (base64 in the JSON; global descriptors as float16 and re-rank descriptors
as int8 codes where that loses nothing, see :func:`pack_partials`), plus the prepared query features stage 2 needs:
the merged answer is bit-identical to one process searching every partition. :func:`pack_partials` splits one
worker's answer into messages under the size limit, sizing candidates from their array shapes and encoding each
message once (the encoding that is sent).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from l2g_core import Candidates, Coverage, FrameKey, FrameSource, PreparedQuery, Stage, Transport
from l2g_core.cosine import torch_view, widen
from l2g_core.index.shard import dequantize_int8, quantize_int8
from stream.envelope import OutboundMessage, encode_message
from stream.errors import MessageTooLargeError, SchemaError
from stream.messages import CandidatePartial, CandidateSection, QueryFeatures

__all__ = [
    "PackedPartial",
    "PartitionList",
    "candidates_from_sections",
    "pack_partials",
    "prepared_from_payload",
    "query_payload",
]

_SECTION_OVERHEAD = 300  # JSON keys and coverage of one section, bytes (generous)
_MESSAGE_SLACK = 512  # headers and rounding, bytes


@dataclass(frozen=True)
class PartitionList:
    """One partition's stage-1 list, already cut to ``Transport.candidates``.

    Attributes:
        partition: the video partition.
        candidates: its candidates, best first.
    """

    partition: int
    candidates: Candidates


@dataclass(frozen=True)
class PackedPartial:
    """A partial and its encoding (what is produced)."""

    partial: CandidatePartial
    message: OutboundMessage


def query_payload(prepared: PreparedQuery, transport: Transport, image_size: tuple[int, int] = (0, 0)
                  ) -> QueryFeatures:
    """The query features stage 2 uses (the strongest ``transport.query_features``), float32 bytes.

    ``image_size``: ``(height, width)`` of the query image the keypoints refer to (``(0, 0)``: unknown).
    """
    total = prepared.descriptors.shape[0]
    n = total if transport.query_features is None else min(transport.query_features, total)
    return QueryFeatures(
        count=n,
        descriptors=np.ascontiguousarray(prepared.descriptors[:n], dtype="<f4").tobytes(),
        keypoints=np.ascontiguousarray(prepared.keypoints[:n], dtype="<f4").tobytes(),
        global_descriptor=np.ascontiguousarray(prepared.global_descriptor, dtype="<f4").tobytes(),
        image_height=max(0, int(image_size[0])), image_width=max(0, int(image_size[1])),
    )


def prepared_from_payload(payload: QueryFeatures, local_dim: int, global_dim: int) -> PreparedQuery:
    """The :class:`~l2g_core.PreparedQuery` a partial carries.

    Raises:
        SchemaError: the arrays do not match the dimensions.
    """
    desc = np.frombuffer(payload.descriptors, dtype="<f4")
    glob = np.frombuffer(payload.global_descriptor, dtype="<f4")
    if local_dim <= 0 or global_dim <= 0 or desc.size != payload.count * local_dim or glob.size != global_dim:
        raise SchemaError(f"query features ({payload.count} x {desc.size // max(payload.count, 1)}, global "
                          f"{glob.size}) do not match the partial's dimensions ({local_dim}, {global_dim})")
    return PreparedQuery(
        descriptors=desc.reshape(payload.count, local_dim).astype(np.float32),
        keypoints=np.frombuffer(payload.keypoints, dtype="<f4").reshape(payload.count, 2).astype(np.float32),
        global_descriptor=glob.astype(np.float32),
    )


def _sent_descriptors(cands: Candidates, i: int, transport: Transport) -> int:
    if i < transport.verified:  # the geometric proof's candidates: every stored descriptor
        return int(cands.descriptors[i].shape[0])
    if transport.described <= i < cands.ranked:  # (the joined tail is described like the ranking's best)
        return 0
    stored = int(cands.descriptors[i].shape[0])
    return stored if transport.descriptors is None else min(transport.descriptors, stored)


def _as_float16(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to float16 (torch converts ~3x faster than numpy)."""
    out: np.ndarray = torch_view(np.asarray(values, dtype=np.float32)).half().numpy()
    return out


@dataclass(frozen=True)
class _Encoding:
    """How one partition's arrays travel, each as small as it can be without changing a value, computed once for
    the partition (its sections take slices).

    Attributes:
        globals16: ``(n, G)`` float16 global descriptors when every one is exact in float16 (an index of float16
            globals), else None (float32).
        codes, scales: the sent re-rank descriptors, candidate after candidate, as ``(m, D)`` int8 codes and
            ``(m,)`` float16 scales when they give back exactly the float16 values (an index of int8 re-rank
            features), else None (float16).
        rows: ``(n + 1,)`` int64 first sent-descriptor row of each candidate (and the total).
    """

    globals16: np.ndarray | None
    codes: np.ndarray | None
    scales: np.ndarray | None
    rows: np.ndarray

    def sent(self, i: int) -> int:
        """Re-rank descriptors sent for candidate ``i``."""
        return int(self.rows[i + 1] - self.rows[i])

    @property
    def version(self) -> int:
        """The ``candidate_partial`` version that carries it."""
        return 3 if self.codes is not None else 2 if self.globals16 is not None else 1

    def candidate_bytes(self, local_dim: int, global_dim: int, descriptors: int, keypoints: bool) -> int:
        """Raw bytes of one candidate's arrays."""
        row = local_dim + 2 if self.codes is not None else 2 * local_dim
        return 4 + (4 if self.globals16 is None else 2) * global_dim + descriptors * (row + (8 if keypoints else 0))


def _encoding(part: PartitionList, transport: Transport, max_version: int) -> _Encoding:
    """The smallest encoding of ``part`` that loses nothing, up to ``max_version``."""
    cands = part.candidates
    counts = [_sent_descriptors(cands, i, transport) for i in range(len(cands))]
    rows = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
    globals16 = codes = scales = None
    g = cands.global_descriptors
    if max_version >= 2 and g.size:
        narrow = _as_float16(g)
        globals16 = narrow if np.array_equal(widen(narrow), g) else None
    sent = [cands.descriptors[i][:n] for i, n in enumerate(counts) if n]
    if max_version >= 3 and sent:
        descriptors = np.concatenate(sent).astype(np.float16, copy=False)
        q_codes, q_scales = quantize_int8(descriptors)
        if np.array_equal(dequantize_int8(q_codes, q_scales), descriptors):
            codes, scales = q_codes, q_scales
    return _Encoding(globals16, codes, scales, rows)


def _section(part: PartitionList, start: int, end: int, transport: Transport, encoding: _Encoding
             ) -> CandidateSection:
    cands = part.candidates
    counts = np.diff(encoding.rows[start:end + 1]).tolist()
    lo, hi = int(encoding.rows[start]), int(encoding.rows[end])
    if encoding.codes is not None and encoding.scales is not None:
        descriptors = encoding.codes[lo:hi].tobytes()
        scales = np.ascontiguousarray(encoding.scales[lo:hi], dtype="<f2").tobytes()
    else:
        descriptors = b"".join(np.ascontiguousarray(cands.descriptors[i][:n], dtype="<f2").tobytes()
                               for i, n in zip(range(start, end), counts, strict=True) if n)
        scales = b""
    kps = [np.ascontiguousarray(cands.keypoints[i][:n], dtype="<f4") for i, n in zip(range(start, end), counts,
                                                                                      strict=True) if n] \
        if transport.keypoints else []
    globs = (np.ascontiguousarray(cands.global_descriptors[start:end], dtype="<f4") if encoding.globals16 is None
             else np.ascontiguousarray(encoding.globals16[start:end], dtype="<f2"))
    keys = cands.keys[start:end]
    sources = [k.source for k in keys]
    known = any(s is not None for s in sources)
    return CandidateSection(
        partition=part.partition, start=start, total=len(cands), joined=cands.joined,
        cameras=[k.camera_id for k in keys],
        timestamps=[float(k.timestamp) for k in keys],
        sequences=[int(k.sequence) for k in keys],
        scores=np.ascontiguousarray(cands.scores[start:end], dtype="<f4").tobytes(),
        global_descriptors=globs.tobytes(),
        global_dtype=None if encoding.globals16 is None else "float16",
        descriptor_counts=counts,
        descriptors=descriptors,
        descriptor_dtype="int8" if scales else None,
        descriptor_scales=scales,
        keypoints=b"".join(k.tobytes() for k in kps),
        chunk_offsets=[-1 if s is None else s.offset for s in sources] if known else [],
        chunk_frames=[-1 if s is None else s.index for s in sources] if known else [],
        frame_sizes=[(0, 0) if s is None else (s.width, s.height) for s in sources] if known else [],
        coverage=cands.coverage,
    )


def _candidate_bytes(cands: Candidates, i: int, transport: Transport, local_dim: int, global_dim: int,
                     encoding: _Encoding) -> int:
    """Upper estimate of one candidate's share of the JSON (base64 arrays, key fields)."""
    raw = encoding.candidate_bytes(local_dim, global_dim, encoding.sent(i), transport.keypoints)
    return math.ceil(raw * 4 / 3) + len(cands.keys[i].camera_id) + 48 + 40  # (+ chunk offset, index, size)


def _header_bytes(base: CandidatePartial, *, with_features: bool, source: str) -> int:
    update: dict[str, object] = {"sections": [], "partitions": []}
    if not with_features:
        update["query_features"] = None
    return len(encode_message(base.model_copy(update=update), source=source).value)


def _fit_query_features(base: CandidatePartial, max_bytes: int, source: str) -> tuple[CandidatePartial, int]:
    """``base`` with its query features cut (strongest kept, noted) until they take at most half a message."""
    header = _header_bytes(base, with_features=True, source=source)
    feats = base.query_features
    d = base.local_dim
    while feats is not None and header > max_bytes // 2 and feats.count > 1:
        n = feats.count // 2  # stage 2 becomes approximate: say so
        feats = feats.model_copy(update={"count": n, "descriptors": feats.descriptors[:n * d * 4],
                                         "keypoints": feats.keypoints[:n * 8]})
        note = f"query features cut to the strongest {n} to fit kafka.max_message_bytes={max_bytes}"
        kept = [x for x in base.notes if not x.startswith("query features cut")]
        base = base.model_copy(update={"query_features": feats, "notes": [*kept, note]})
        header = _header_bytes(base, with_features=True, source=source)
    return base, header


def pack_partials(base: CandidatePartial, lists: Sequence[PartitionList], transport: Transport, max_bytes: int, *,
                  source: str, max_version: int = 1) -> list[PackedPartial]:
    """Split one worker's answer into partials that each encode under ``max_bytes``.

    Args:
        base: the partial's header fields (query, worker, deadline, query features, ...); its sections are ignored.
        lists: per partition, the candidates cut to ``transport.candidates`` (and their joined tail).
        transport: what travels.
        max_bytes: the message size limit.
        source: the ``ce_source`` of the messages.
        max_version: the newest ``candidate_partial`` version written. Each partition travels as small as it can
            without losing a value: 2, global descriptors as float16 when every one is exact in float16; 3, re-rank
            descriptors as int8 codes when they give back the float16 values exactly. The partials carry the
            newest version any of their partitions needs (1, the previous release's, when none does).

    Returns:
        The partials with their encodings; only the first carries ``query_features``.

    Raises:
        MessageTooLargeError: one candidate alone, or the query features alone, do not fit.
    """
    encodings = [_encoding(part, transport, max_version) for part in lists]
    base = base.model_copy(update={"version": max([1, *(e.version for e in encodings)])})
    base, header = _fit_query_features(base, max_bytes, source)
    rest = _header_bytes(base, with_features=False, source=source)
    budgets = (int(max_bytes * 0.9) - header - _MESSAGE_SLACK, int(max_bytes * 0.9) - rest - _MESSAGE_SLACK)
    if budgets[0] <= 0 or budgets[1] <= 0:
        raise MessageTooLargeError(f"the query features alone exceed kafka.max_message_bytes={max_bytes}")
    messages: list[list[tuple[int, int, int]]] = [[]]  # per message: (list index, start, end)
    used = 0
    for li, part in enumerate(lists):
        cands = part.candidates
        n = len(cands)
        start = i = 0
        while i < n or (n == 0 and i == 0):
            size = (_candidate_bytes(cands, i, transport, base.local_dim, base.global_dim, encodings[li])
                    if n else 0) + \
                (_SECTION_OVERHEAD if i == start else 0)
            budget = budgets[0 if len(messages) == 1 else 1]
            if used + size > budget and (messages[-1] or i > start or len(messages) == 1):
                if i > start:
                    messages[-1].append((li, start, i))
                if not messages[-1] and len(messages) > 1:
                    raise MessageTooLargeError(
                        f"one candidate needs ~{size} bytes, over kafka.max_message_bytes={max_bytes}")
                messages.append([])  # (the first message may carry the query features alone)
                used, start = 0, i
                continue
            used += size
            i += 1
        messages[-1].append((li, start, n))
    out: list[PackedPartial] = []
    for m, slices in enumerate(messages):
        if not slices and m > 0:
            continue  # (an empty first message still carries the query features)
        sections = [_section(lists[li], s, e, transport, encodings[li]) for li, s, e in slices]
        partial = base.model_copy(update={
            "sections": sections,
            "partitions": sorted({sec.partition for sec in sections}),
            "query_features": base.query_features if m == 0 else None,
        })
        out.append(PackedPartial(partial, encode_message(partial, source=source, max_bytes=max_bytes)))
    return out


def _section_sources(sec: CandidateSection) -> list[FrameSource | None]:
    """Per candidate of ``sec``, where its frame lives (None where unknown)."""
    if not sec.chunk_offsets:
        return [None] * len(sec.cameras)
    return [None if off < 0 or idx < 0 else FrameSource(sec.partition, off, idx, max(w, 0), max(h, 0))
            for off, idx, (w, h) in zip(sec.chunk_offsets, sec.chunk_frames, sec.frame_sizes, strict=True)]


def candidates_from_sections(sections: Sequence[CandidateSection], stage: Stage, local_dim: int,
                             global_dim: int) -> Candidates:
    """Reassemble one partition's candidate list from its slices (ordered by ``start``).

    The coverage and the joined tail's length are the partition's (every slice repeats them).

    Raises:
        SchemaError: the arrays do not match the declared counts or dimensions, or the slices disagree on the
            joined tail.
    """
    if len({sec.joined for sec in sections}) > 1:
        raise SchemaError(f"the slices of one partition's list disagree on its joined tail "
                          f"({sorted({sec.joined for sec in sections})})")
    keys: list[FrameKey] = []
    scores: list[np.ndarray] = []
    globs: list[np.ndarray] = []
    descs: list[np.ndarray] = []
    kps: list[np.ndarray] = []
    if local_dim <= 0 or global_dim <= 0:
        raise SchemaError(f"candidate sections need positive dimensions, got ({local_dim}, {global_dim})")
    try:
        for sec in sorted(sections, key=lambda s: s.start):
            n = len(sec.cameras)
            keys += [FrameKey(c, t, q, s) for c, t, q, s in zip(sec.cameras, sec.timestamps, sec.sequences,
                                                                 _section_sources(sec), strict=True)]
            scores.append(np.frombuffer(sec.scores, dtype="<f4"))
            globs.append(np.frombuffer(sec.global_descriptors, dtype="<f2" if sec.global_dtype == "float16"
                                       else "<f4").reshape(n, global_dim))
            counts = np.asarray(sec.descriptor_counts, dtype=np.int64)
            if sec.descriptor_dtype == "int8":
                d = dequantize_int8(np.frombuffer(sec.descriptors, dtype=np.int8).reshape(int(counts.sum()), local_dim),
                                    np.frombuffer(sec.descriptor_scales, dtype="<f2"))
            else:
                d = np.frombuffer(sec.descriptors, dtype="<f2").reshape(int(counts.sum()), local_dim)
            kp = np.frombuffer(sec.keypoints, dtype="<f4").reshape(int(counts.sum()), 2) if sec.keypoints else \
                np.zeros((int(counts.sum()), 2), np.float32)
            bounds = np.cumsum(counts)[:-1]
            descs += [x.astype(np.float16) for x in np.split(d, bounds)] if n else []
            kps += [x.astype(np.float32) for x in np.split(kp, bounds)] if n else []
    except (ValueError, TypeError) as exc:  # numpy reshape of foreign bytes; FrameKey's ShapeError is a ValueError
        raise SchemaError(f"candidate section does not match its dimensions: {exc}") from exc
    joined = sections[0].joined if sections else 0
    if joined > len(keys):
        raise SchemaError(f"a joined tail of {joined} in a list of {len(keys)} candidates")
    return Candidates(
        keys=keys,
        scores=np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, np.float32),
        stage=stage,
        global_descriptors=np.concatenate(globs).astype(np.float32) if globs else np.zeros((0, global_dim),
                                                                                             np.float32),
        descriptors=descs,
        keypoints=kps,
        coverage=sections[0].coverage if sections else Coverage(),
        joined=joined,
    )
