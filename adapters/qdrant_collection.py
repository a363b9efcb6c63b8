"""What a Qdrant collection's config and its first payloads say: which vector a URI reads,
with which distance, and where the text is (the framework's payload layout).

The Qdrant counterpart of ``guard.adapters.pgvector_catalog``, kept apart from the store
so that the rules (an unnamed vector or the one named, a layout detected from stored
payloads or from those about to be written) read in one place, without the client calls
that fetch their input. Layout rules themselves are ``guard.adapters.layouts``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qdrant_client import models

from guard.adapters.layouts import (
    DEFAULT_PAYLOAD_LAYOUT,
    EmbedTemplate,
    PayloadLayout,
    payload_layout,
)
from guard.errors import StoreError
from guard.records import Distance

DISTANCES: dict[models.Distance, Distance] = {
    models.Distance.COSINE: "cosine",
    models.Distance.DOT: "dot",
    models.Distance.EUCLID: "l2",
    models.Distance.MANHATTAN: "l1",
}
QDRANT_DISTANCES = {ours: theirs for theirs, ours in DISTANCES.items()}


def local_collections(folder: Path) -> list[str] | None:
    """The collections of a local-mode folder, read from its ``meta.json`` without
    opening (and locking) the folder; None where it holds no readable one."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        return sorted(meta["collections"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def listed(names: Sequence[str] | None) -> str:
    """`` (here: a, b)``: the collections a message can point to, "" when unknown."""
    if names is None:
        return ""
    return f" (here: {', '.join(sorted(names)) or 'none'})"


def vector_params(
    config: models.VectorParams | Mapping[str, models.VectorParams] | None,
    vector_name: str | None,
    *,
    uri: str,
) -> tuple[models.VectorParams, str | None]:
    """The params of the vector a URI reads (``vector=``, or the only one) and its name
    (None: the collection's one unnamed vector), from the collection's vectors config."""
    if isinstance(config, models.VectorParams):
        if vector_name:
            raise StoreError(f"collection has one unnamed vector, not {vector_name!r}", uri=uri)
        return config, None
    named = dict(config or {})
    if vector_name is None and len(named) == 1:
        vector_name = next(iter(named))
    if vector_name not in named:
        wanted = (
            f"no vector named {vector_name!r}"
            if vector_name
            else "several named vectors; pick one with vector="
        )
        raise StoreError(f"{wanted} (has: {', '.join(sorted(named))})", uri=uri)
    return named[vector_name], vector_name


def detect_layout(
    stored: Sequence[Mapping[str, Any]],
    hint: Sequence[Mapping[str, Any]],
    text_field: str | None,
    template: EmbedTemplate | None,
    *,
    uri: str,
) -> PayloadLayout:
    """The layout of the first ``stored`` payloads; an empty collection takes the layout
    of the payloads about to be written (``hint``), else plain ``text``."""
    layout = payload_layout(stored or hint, text_field, template)
    if not stored:
        return layout or DEFAULT_PAYLOAD_LAYOUT
    if layout is None:
        keys = sorted({key for payload in stored for key in payload})
        raise StoreError(
            f"no text field found in the payload (keys: {', '.join(keys) or 'none'}); "
            "name it with text_field=",
            uri=uri,
        )
    if text_field and all(text_field not in payload for payload in stored):
        raise StoreError(
            f"payload field {text_field!r} not found in the first points",
            uri=uri,
        )
    return layout
