"""Where frameworks keep the source text: payload layouts (Qdrant) and table layouts (pgvector).

Detection is a list of small rules tried in order; the first that matches names the
layout. Adding a framework is adding one rule and its test (tests/test_store_layouts.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# --- Qdrant: the text lives in a payload field ------------------------------------------


@dataclass(frozen=True)
class PayloadLayout:
    """A payload field that holds the text as a plain string."""

    name: str  # plain, langchain, haystack, llamaindex, or custom
    field: str

    def read(self, payload: Mapping[str, Any] | None) -> str | None:
        value = (payload or {}).get(self.field)
        return value if isinstance(value, str) and value else None

    def write(self, payload: Mapping[str, Any], text: str | None) -> dict[str, Any]:
        """The payload with ``text`` stored where this layout keeps it (None: unchanged)."""
        written = dict(payload)
        if text is not None:
            written[self.field] = text
        return written


@dataclass(frozen=True)
class NodeContentLayout(PayloadLayout):
    """LlamaIndex: ``_node_content`` is the node serialised as JSON, text under ``text``
    (``text_resource.text`` in the multimodal node classes of llama-index-core 0.12+)."""

    def read(self, payload: Mapping[str, Any] | None) -> str | None:
        node = _node(payload, self.field)
        text = node.get("text")
        if not isinstance(text, str) or not text:
            resource = node.get("text_resource")
            text = resource.get("text") if isinstance(resource, dict) else None
        return text if isinstance(text, str) and text else None

    def write(self, payload: Mapping[str, Any], text: str | None) -> dict[str, Any]:
        written = dict(payload)
        if text is not None:
            node = _node(payload, self.field)
            node["text"] = text
            written[self.field] = json.dumps(node)
        return written


def _node(payload: Mapping[str, Any] | None, field: str) -> dict[str, Any]:
    raw = (payload or {}).get(field)
    if not isinstance(raw, str):
        return {}
    try:
        node = json.loads(raw)
    except ValueError:
        return {}
    return node if isinstance(node, dict) else {}


# (payload key that marks the layout, layout) in the order they are tried: LlamaIndex
# first because its payload may also carry a flattened ``text`` copy in metadata.
PAYLOAD_LAYOUTS: tuple[PayloadLayout, ...] = (
    NodeContentLayout("llamaindex", "_node_content"),
    PayloadLayout("langchain", "page_content"),
    PayloadLayout("haystack", "content"),
    PayloadLayout("plain", "text"),
)
DEFAULT_PAYLOAD_LAYOUT = PAYLOAD_LAYOUTS[-1]


def payload_layout(
    payloads: Iterable[Mapping[str, Any] | None], text_field: str | None = None
) -> PayloadLayout | None:
    """The layout of these payloads, or None when no known text field is present.

    An explicit ``text_field`` wins; it is named after the framework whose field it is,
    ``custom`` otherwise.
    """
    if text_field:
        for layout in PAYLOAD_LAYOUTS:
            if layout.field == text_field:
                return layout
        return PayloadLayout("custom", text_field)
    keys: set[str] = set()
    for payload in payloads:
        keys.update(payload or {})
    return next((layout for layout in PAYLOAD_LAYOUTS if layout.field in keys), None)


# --- pgvector: the text lives in a column ------------------------------------------------


@dataclass(frozen=True)
class TableLayout:
    name: str  # plain, langchain, llamaindex, pgai, haystack, or custom
    text_column: str
    id_column: str | None = None  # None: the primary key decides


TableRule = Callable[[str, Collection[str]], TableLayout | None]


def _langchain(table: str, columns: Collection[str]) -> TableLayout | None:
    """langchain-postgres PGVector (``id``) and the older langchain-community one (``uuid``)."""
    if table == "langchain_pg_embedding" or {"document", "cmetadata"} <= set(columns):
        return TableLayout("langchain", "document", "id" if "id" in columns else "uuid")
    return None


def _llamaindex(table: str, columns: Collection[str]) -> TableLayout | None:
    """LlamaIndex PGVectorStore: ``data_<name>`` with text, node_id, metadata_."""
    if table.startswith("data_") and {"text", "node_id", "metadata_"} <= set(columns):
        return TableLayout("llamaindex", "text", "id")
    return None


def _pgai(table: str, columns: Collection[str]) -> TableLayout | None:
    """pgai vectorizer: ``<name>_embedding_store`` with chunk and embedding_uuid."""
    if {"chunk", "embedding_uuid"} <= set(columns):
        return TableLayout("pgai", "chunk", "embedding_uuid")
    return None


def _haystack(table: str, columns: Collection[str]) -> TableLayout | None:
    """Haystack's PgvectorDocumentStore: ``haystack_documents`` with content and meta."""
    if "content" in columns and (table == "haystack_documents" or "meta" in columns):
        return TableLayout("haystack", "content", "id")
    return None


def _plain(table: str, columns: Collection[str]) -> TableLayout | None:
    return TableLayout("plain", "text") if "text" in columns else None


TABLE_RULES: tuple[TableRule, ...] = (_langchain, _llamaindex, _pgai, _haystack, _plain)


def table_layout(
    table: str, columns: Collection[str], text_column: str | None = None
) -> TableLayout | None:
    """The layout of a table, or None when no known text column is present."""
    detected = next((layout for rule in TABLE_RULES if (layout := rule(table, columns))), None)
    if text_column:
        if detected and detected.text_column == text_column:
            return detected
        return TableLayout("custom", text_column, detected.id_column if detected else None)
    return detected
