"""A user's rolling vector and the update rule applied per event.

The vector is a time-decayed sum of signed event vectors, kept in encoder space so that
it stays valid when a new model version swaps in (trained adapters apply at scoring
time, see :mod:`inference.ranking`). Decay uses *event* time, never wall-clock time, so
replaying a stream offline gives exactly the state the workers built online.

Example::

    cfg = UpdateConfig(half_life_s=86400)
    state = UserState.empty(dim=3)
    apply_event(state, item_id="a", event_id="e1", kind="click", event_time=0.0,
                item_vec=np.array([1, 0, 0], np.float32), config=cfg)
    state.count  # 1
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import numpy as np

from .seen import KEY_DTYPE, add_key, item_key, item_keys

#: 2: adds each recent item's signed weight; 3: the seen-items keys; 4: the recent event sequence
#: (1 to 3 still read)
STATE_FORMAT = 4
_MAGIC = b"SU"
_HEAD = struct.Struct("<2sBHIdd")  # magic, format, dim, count, last_time, weight


@dataclass
class UpdateConfig:
    """How one event moves a user's vector."""

    half_life_s: float = 30 * 86400.0  # an event one half-life old counts half
    click_weight: float = 1.0
    review_weight: float = 2.0  # a review says more than a click
    text_mix: float = 0.5  # share of the review-text vector (the rest is the item's vector)
    rating_neutral: float = 3.0  # a 3-star review neither pulls nor pushes
    rating_span: float = 2.0  # (rating - neutral) / span, clipped to [-1, 1], signs the event
    recent_items: int = 100  # kept with their weights (explanations, a trained version's context)
    #: Items interacted with, kept as 4-byte keys and excluded from every list (unless
    #: ``RecommenderConfig.repeats``); past this many the oldest are forgotten (80 KB a user).
    seen_items: int = 20_000
    recent_events: int = 200  # kept to drop duplicate event ids
    #: The most recent events (item key, sign, time) a trained sequence encoder reads
    #: (:mod:`inference.sequence`): 9 bytes each.
    sequence_items: int = 50

    def sign(self, rating: float | None) -> float:
        """+1 for no rating; otherwise the rating mapped to [-1, 1] around neutral."""
        if rating is None:
            return 1.0
        return float(np.clip((rating - self.rating_neutral) / self.rating_span, -1.0, 1.0))


@dataclass(frozen=True)
class Sequence:
    """A user's recent events as three aligned arrays (see ``UserState.seq``)."""

    keys: np.ndarray  # KEY_DTYPE item keys
    signs: np.ndarray  # int8: -1, 0, +1
    times: np.ndarray  # float64 event times (-inf: unknown, in states written before format 4)

    @classmethod
    def empty(cls) -> Sequence:
        return cls(np.zeros(0, KEY_DTYPE), np.zeros(0, np.int8), np.zeros(0, np.float64))

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: int, sign: int, time: float, cap: int) -> Sequence:
        """A new sequence with the event inserted in time order (after the events of the same
        time: those keep their arrival order), the oldest dropped past ``cap``."""
        t, k = self.times, self.keys
        at = int(np.searchsorted(t, time, side="right"))
        keys = np.insert(k, at, np.asarray(key, KEY_DTYPE))
        signs = np.insert(self.signs, at, np.int8(sign))
        times = np.insert(t, at, time)
        if len(keys) > cap:
            keys, signs, times = keys[-cap:], signs[-cap:], times[-cap:]
        return Sequence(keys, signs, times)


@dataclass
class UserState:
    """Everything streamrec keeps per user; serialises to compact bytes for a Faust table."""

    vector: np.ndarray
    last_time: float = 0.0
    count: int = 0
    weight: float = 0.0  # decayed total |weight|: how much evidence the vector carries
    recent_items: list[str] = field(default_factory=list)
    recent_events: list[str] = field(default_factory=list)
    #: Per entry of ``recent_items``: the signed, decayed weight that item's events carry in
    #: ``vector`` as of ``last_time`` (what explanations split a score by). NaN: unknown
    #: (the state was written by a format-1 build).
    recent_weights: list[float] = field(default_factory=list)
    #: Keys (:func:`inference.seen.item_key`) of every item interacted with, oldest first
    #: (capped at ``UpdateConfig.seen_items``): what lists exclude. Replaced, never written
    #: to, on each event, so a ranking request can keep a reference as its snapshot.
    seen: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=KEY_DTYPE))
    #: The last ``UpdateConfig.sequence_items`` events, oldest first, in event-time order (events
    #: of the same time in the order they arrived): the item keys, each event's sign (-1 below
    #: the neutral rating, 0 neutral, +1) and its time. Replaced, never written to, on each
    #: event (a ranking request keeps a reference as its snapshot).
    seq: Sequence = field(default_factory=lambda: Sequence.empty())

    @classmethod
    def empty(cls, dim: int) -> UserState:
        return cls(vector=np.zeros(dim, dtype=np.float32))

    @property
    def dim(self) -> int:
        return int(self.vector.shape[0])

    def unit(self) -> np.ndarray | None:
        """The direction used for scoring, or None while the user has no signal (cold start)."""
        norm = float(np.linalg.norm(self.vector))
        if not math.isfinite(norm) or norm < 1e-9:
            return None
        return (self.vector / norm).astype(np.float32)

    def has_seen(self, event_id: str | None) -> bool:
        return event_id is not None and event_id in self.recent_events

    def has_interacted(self, item_id: str) -> bool:
        """Whether ``item_id`` is in the seen-items set (see :mod:`inference.seen` for its rare
        false positives)."""
        return bool(self.seen.size) and bool((self.seen == item_key(item_id)).any())

    def item_weights(self) -> dict[str, float]:
        """``{item_id: weight}`` of the recent items (aligned lists, see ``recent_weights``)."""
        weights = self.recent_weights if len(self.recent_weights) == len(self.recent_items) else \
            [math.nan] * len(self.recent_items)
        return dict(zip(self.recent_items, weights))

    # -- bytes ---------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Header, float32 vector, length-prefixed UTF-8 ids, then float32 item weights (no JSON)."""
        parts = [
            _HEAD.pack(_MAGIC, STATE_FORMAT, self.dim, self.count, self.last_time, self.weight),
            np.ascontiguousarray(self.vector, dtype="<f4").tobytes(),
        ]
        for ids in (self.recent_items, self.recent_events):
            parts.append(struct.pack("<H", len(ids)))
            for s in ids:
                raw = s.encode("utf-8")
                parts.append(struct.pack("<H", len(raw)))
                parts.append(raw)
        weights = self.item_weights()
        parts.append(struct.pack("<H", len(self.recent_items)))
        parts.append(np.asarray([weights[i] for i in self.recent_items], dtype="<f4").tobytes())
        parts.append(struct.pack("<I", len(self.seen)))
        parts.append(np.ascontiguousarray(self.seen, dtype=KEY_DTYPE).tobytes())
        seq = self.seq
        parts.append(struct.pack("<H", len(seq)))
        parts.append(np.ascontiguousarray(seq.keys, dtype=KEY_DTYPE).tobytes())
        parts.append(np.ascontiguousarray(seq.signs, dtype=np.int8).tobytes())
        parts.append(np.ascontiguousarray(seq.times, dtype="<f8").tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> UserState:
        """Inverse of :meth:`to_bytes`; ``ValueError`` on bytes that are not a user state."""
        if len(data) < _HEAD.size:
            raise ValueError("user state is truncated")
        magic, fmt, dim, count, last_time, weight = _HEAD.unpack_from(data, 0)
        if magic != _MAGIC:
            raise ValueError("bytes are not a streamrec user state")
        if not 1 <= fmt <= STATE_FORMAT:
            raise ValueError(f"user state format {fmt} is not supported (this build reads 1..{STATE_FORMAT})")
        pos = _HEAD.size
        vector = np.frombuffer(data, dtype="<f4", count=dim, offset=pos).astype(np.float32)
        pos += 4 * dim
        lists: list[list[str]] = []
        for _ in range(2):
            (n,) = struct.unpack_from("<H", data, pos)
            pos += 2
            ids = []
            for _ in range(n):
                (k,) = struct.unpack_from("<H", data, pos)
                pos += 2
                ids.append(data[pos : pos + k].decode("utf-8"))
                pos += k
            lists.append(ids)
        weights = [math.nan] * len(lists[0])
        if fmt >= 2:
            (n,) = struct.unpack_from("<H", data, pos)
            pos += 2
            weights = np.frombuffer(data, dtype="<f4", count=n, offset=pos).astype(float).tolist()
            pos += 4 * n
        if fmt >= 3:
            (n,) = struct.unpack_from("<I", data, pos)
            seen = np.frombuffer(data, dtype=KEY_DTYPE, count=n, offset=pos + 4).copy()
            pos += 4 + 4 * n
        else:  # written before the seen-items set: the recent items are all it knows
            seen = item_keys(lists[0])
        if fmt >= 4:
            (n,) = struct.unpack_from("<H", data, pos)
            pos += 2
            keys = np.frombuffer(data, dtype=KEY_DTYPE, count=n, offset=pos).copy()
            signs = np.frombuffer(data, dtype=np.int8, count=n, offset=pos + 4 * n).copy()
            times = np.frombuffer(data, dtype="<f8", count=n, offset=pos + 5 * n).astype(np.float64)
            seq = Sequence(keys, signs, times)
        else:  # written before the sequence: its recent items (oldest first), times unknown
            seq = _sequence_from_recent(lists[0], weights)
        return cls(vector, last_time, count, weight, lists[0], lists[1], weights, seen, seq)


def _sequence_from_recent(items: list[str], weights: list[float], cap: int = 50) -> Sequence:
    """A pre-format-4 state's sequence: its recent items in order, signed by their weights, at an
    unknown time (older than any event to come)."""
    items, weights = items[-cap:], weights[-cap:]
    signs = [0 if not w == w else (1 if w > 0 else -1 if w < 0 else 0) for w in weights]  # NaN: 0
    return Sequence(item_keys(items), np.asarray(signs, np.int8), np.full(len(items), -np.inf))


def event_vector(
    kind: str,
    item_vec: np.ndarray | None,
    text_vec: np.ndarray | None,
    rating: float | None,
    config: UpdateConfig,
) -> tuple[np.ndarray | None, float]:
    """The signed direction one event adds, and its weight (before time decay).

    A click adds the item's vector. A review mixes the review-text vector with the item's
    and is signed by its rating, so a 1-star review pushes the user away from that item.
    """
    parts = []
    if text_vec is not None and np.any(text_vec):
        parts.append((config.text_mix if item_vec is not None else 1.0, text_vec))
    if item_vec is not None:
        parts.append((1.0 - config.text_mix if parts else 1.0, item_vec))
    if not parts:
        return None, 0.0
    vec = sum(w * np.asarray(v, dtype=np.float32) for w, v in parts)
    if not np.all(np.isfinite(vec)):
        raise ValueError("event vector contains NaN or infinite values; the encoder output is corrupt")
    base = config.review_weight if kind == "review" else config.click_weight
    return vec.astype(np.float32), base * config.sign(rating)


def apply_event(
    state: UserState,
    *,
    item_id: str,
    event_id: str | None,
    kind: str,
    event_time: float,
    item_vec: np.ndarray | None,
    text_vec: np.ndarray | None = None,
    rating: float | None = None,
    config: UpdateConfig,
) -> UserState:
    """Fold one event into ``state`` (in place) and return it.

    Decay is ``2 ** (-dt / half_life)`` in event time. The vector and weight are always
    referenced at ``last_time``: a newer event first decays the state to its own time (even
    one that adds nothing, such as a 3-star review), and an event older than the state (out
    of order) is decayed itself instead, so the result does not depend on arrival order
    beyond float rounding. (Clicks and reviews travel on two topics, so a worker may see a
    user's click and review in either order.)
    """
    vec, weight = event_vector(kind, item_vec, text_vec, rating, config)
    weights = state.item_weights()
    added = 0.0  # this event's weight as of the state's (new) last_time
    if state.count == 0:
        state.last_time = event_time
    elif event_time > state.last_time:
        decay = 0.5 ** ((event_time - state.last_time) / config.half_life_s)
        state.vector = (state.vector * decay).astype(np.float32)
        state.weight *= decay
        state.last_time = event_time
        weights = {k: w * decay for k, w in weights.items()}
    if vec is not None and weight != 0.0:
        late = 0.5 ** ((state.last_time - event_time) / config.half_life_s)  # 1 unless out of order
        state.vector = (state.vector + late * weight * vec).astype(np.float32)
        state.weight += late * abs(weight)
        added = late * weight
    state.count += 1
    _remember(state.recent_items, item_id, config.recent_items)
    key = item_key(item_id)
    state.seen = add_key(state.seen, key, config.seen_items)
    sign = config.sign(rating)
    state.seq = state.seq.add(key, 1 if sign > 0 else -1 if sign < 0 else 0, event_time, config.sequence_items)
    state.recent_weights = [weights.get(i, 0.0) + (added if i == item_id else 0.0) for i in state.recent_items]
    if event_id is not None:
        _remember(state.recent_events, event_id, config.recent_events)
    return state


def _remember(window: list[str], value: str, size: int) -> None:
    if value in window:
        window.remove(value)
    window.append(value)
    del window[: max(0, len(window) - size)]
