"""Typed provenance: which encoder and sampling made a cache's features, and when two agree.

`EncoderSpec` is the one place that says when features are comparable: the cache refuses
to append a pass with another spec, training refuses a stage-1 run from other features,
evaluation refuses (or warns about) another cache, and prediction refuses other weights.
All four call `compatible_with` / `differences`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

from saga.errors import SagaError
from saga.provenance import now, versions
from saga.taxonomy import Taxonomy

# The weights and what they see: what a freshly loaded encoder must match (prediction).
IDENTITY_KEYS = ("weights_fingerprint", "preprocess", "dim", "activation")
# What makes two caches' features comparable (the weights, not where they were read from): "encoder" compares
# the architecture (`architecture` where both record it, else the typed name, a local-dir: by its folder).
COMPATIBILITY_KEYS = ("encoder", "weights_fingerprint", "preprocess", "dim", "sampling", "activation")
# Recorded since 2026-12-02: a cache or run made before has None there, which matches either value.
RECORDED_LATER = ("activation",)


@dataclass(frozen=True)
class EncoderSpec:
    """The frozen encoder, its preprocessing and the sampling policy behind a cache's features."""

    encoder: str
    pretrained: str | None
    weights_fingerprint: str
    preprocess: Any  # canonical repr of the transform (str; test fixtures may use a dict)
    dim: int
    sampling: Mapping[str, Any] | None = None  # None: an encoder on its own, before any sampling policy
    image_size: Sequence[int] | None = None
    # "quick_gelu" or "standard": the same weights under another activation give other features
    # (an open_clip file loaded without the QuickGELU its tag sets), with the same fingerprint.
    activation: str | None = None
    # What the encoder builds, however it was typed (`open_clip:` + a digest of the image tower's config, or
    # `timm:ARCH`); None in older caches and runs, where the typed `encoder` name is compared instead.
    architecture: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "provenance") -> "EncoderSpec":
        """Strict: every required field present, no unknown field."""
        if not isinstance(data, Mapping):
            raise SagaError(f"{where}: encoder provenance must be a mapping, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SagaError(f"{where}: unknown encoder provenance field(s) {', '.join(unknown)}")
        missing = [k for k in ("encoder", "weights_fingerprint", "preprocess", "dim") if data.get(k) is None]
        if missing:
            raise SagaError(f"{where}: encoder provenance lacks {', '.join(missing)}")
        return cls(**dict(data))

    @classmethod
    def of_cache(cls, attrs: Mapping[str, Any], where: str = "cache") -> "EncoderSpec":
        """The spec recorded among a cache's attributes (which also hold taxonomy, split, versions...)."""
        return cls.from_dict({f.name: attrs.get(f.name) for f in fields(cls)}, where)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["image_size"] is not None:
            out["image_size"] = list(out["image_size"])
        return out

    def differences(self, other: "EncoderSpec", keys: Sequence[str] = COMPATIBILITY_KEYS) -> list[str]:
        """The fields of `keys` on which the two specs disagree (empty: comparable features)."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [k for k in keys if not _same(k, mine, theirs)]

    def compatible_with(self, other: "EncoderSpec", keys: Sequence[str] = COMPATIBILITY_KEYS) -> bool:
        return not self.differences(other, keys)

    @classmethod
    def simulated(cls, dim: int, frames: int, windows: int = 1, name: str = "simulated",
                  preprocess: str = "none") -> "EncoderSpec":
        """A spec for features made without an encoder (tests, benchmarks of the cache and of training)."""
        return cls(encoder=name, pretrained="none", weights_fingerprint="0" * 16, preprocess=preprocess, dim=dim,
                   sampling={"frames": frames, "mode": "consecutive", "windows": windows})


def _same(key: str, mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> bool:
    """Equal for the purpose of `key`; see COMPATIBILITY_KEYS and RECORDED_LATER."""
    if key == "encoder":
        if mine.get("architecture") and theirs.get("architecture"):
            return mine["architecture"] == theirs["architecture"]
        return encoder_identity(mine) == encoder_identity(theirs)
    if key == "preprocess":
        return normal_preprocess(mine[key]) == normal_preprocess(theirs[key])
    return mine[key] == theirs[key] or (key in RECORDED_LATER and None in (mine[key], theirs[key]))


def encoder_identity(spec: Mapping[str, Any]) -> str:
    """The typed name, with a local-dir: by the absolute folder it resolved to (recorded as `pretrained`)."""
    name = str(spec.get("encoder"))
    if name.startswith("local-dir:") and spec.get("pretrained"):
        return f"local-dir:{spec['pretrained']}"
    return name


def normal_preprocess(value: Any) -> Any:
    """A transform's text with lists as tuples: older caches recorded `mean=[0.5, ...]` for a
    JSON config where a tag gives `mean=(0.5, ...)`, the same transform."""
    if not isinstance(value, str):
        return value
    return re.sub(r",\s*\)", ")", value.replace("[", "(").replace("]", ")"))


def first_difference(a: Any, b: Any, width: int = 60) -> tuple[str, str]:
    """The parts of two long values from just before where they first differ (not a common prefix).

    Both shown whole when they fit in `width`; else from the word holding the difference, or from the part of a
    path or name after its last `/`, `:`, `(`... before it, never from the middle of a word.
    """
    a, b = str(a), str(b)
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    start = 0 if max(len(a), len(b)) <= width else _cut_at(a, at, width)

    def cut(text: str) -> str:
        return ("..." if start else "") + text[start:start + width] + ("..." if len(text) > start + width else "")

    return cut(a), cut(b)


def _cut_at(text: str, at: int, width: int, reach: int = 40) -> int:
    """Where to start showing `text` so that `at` shows: after the last space within `reach`, else after the
    earliest punctuation within it (a path keeps its last folders), else the start when `at` fits; only a long
    unbroken run (a digest) is cut inside."""
    space = text.rfind(" ", 0, at)
    if space >= 0 and at - space <= reach:
        return space + 1
    low = max(0, at - reach)
    mark = next((i for i in range(low, at) if text[i] in "/\\:,;=([{|"), None)
    if mark is not None:
        return mark + 1
    return 0 if at + 12 <= width else at - 12


@dataclass(frozen=True)
class CacheProvenance:
    """What a cache pass records about itself: the encoder spec and the taxonomy's generators."""

    encoder: EncoderSpec
    generators: Mapping[str, Any] | None = None

    @classmethod
    def from_dict(cls, attrs: Mapping[str, Any], where: str = "cache") -> "CacheProvenance":
        taxonomy = attrs.get("taxonomy") or {}
        return cls(EncoderSpec.of_cache(attrs, where), taxonomy.get("generators"))

    def differences(self, other: "CacheProvenance") -> list[str]:
        """Encoder fields that differ, then "taxonomy" when both name generators and they differ."""
        out = self.encoder.differences(other.encoder)
        if self.generators and other.generators and self.generators != other.generators:
            out.append("taxonomy")
        return out

    def compatible_with(self, other: "CacheProvenance") -> bool:
        return not self.differences(other)


DEFAULT_SPLIT = {"train": 0.7, "val": 0.1, "test": 0.2}  # of each generator's videos
DEFAULT_SHARD_ROWS = 128  # videos per stored shard (`saga extract --shard-rows`; saga.cache.partwriter)


def cache_provenance(encoder: EncoderSpec, taxonomy: Taxonomy, split_seed: int = 0,
                     fractions: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The attributes a cache pass records: the one shape extraction, tests and benchmarks all write."""
    if encoder.sampling is None:
        raise SagaError(f"{encoder.encoder}: a cache needs the sampling policy in its encoder spec")
    return {**encoder.to_dict(), "taxonomy": taxonomy.to_dict(),
            "split": {"seed": split_seed, "fractions": dict(fractions or DEFAULT_SPLIT)},
            "versions": versions(), "created": now()}
