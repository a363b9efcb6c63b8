"""Where frameworks keep the source text, and how they built the text they embedded:
payload layouts (Qdrant) and table layouts (pgvector).

Detection is a list of small rules tried in order; the first that matches names the
layout. Adding a framework is adding one rule and its test (tests/test_store_layouts.py).

A layout's ``read``/``embedded`` gives the text the framework embedded, which is what the
guard re-embeds: LlamaIndex embeds its metadata lines with the text (``MetadataMode.EMBED``),
rebuilt here from the template, separator and exclusions it stores in ``_node_content``.
Where the framework's choice is not stored (Haystack's ``meta_fields_to_embed``, LangChain
prefixes), the ``embed_text=`` store option gives it as an ``EmbedTemplate``.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from guard.errors import ConfigError

# --- embed_text=TEMPLATE -----------------------------------------------------------------


@dataclass(frozen=True)
class EmbedTemplate:
    """``{title}\\n{text}``: literal text and fields, where a field is a payload key or a
    column, and ``{meta.title}`` a key inside a JSON value. ``{{`` and ``}}`` are braces.
    A missing or null field renders as nothing. No format specs or conversions: the
    template is data, never code."""

    source: str
    parts: tuple[tuple[str, tuple[str, ...] | None], ...]  # (literal, field path or None)

    @classmethod
    def parse(cls, source: str) -> EmbedTemplate:
        parts: list[tuple[str, tuple[str, ...] | None]] = []
        try:
            parsed = list(string.Formatter().parse(source))
        except ValueError as exc:
            raise ConfigError(f"embed_text={source!r} is not a template: {exc}") from None
        for literal, name, spec, conversion in parsed:
            if name is None:
                parts.append((literal, None))
                continue
            path = tuple(name.split("."))
            if spec or conversion or not all(path):
                raise ConfigError(
                    f"embed_text={source!r}: write fields as {{name}} or {{name.key}}, "
                    f"not {{{name}{'!' + conversion if conversion else ''}"
                    f"{':' + spec if spec else ''}}}"
                )
            parts.append((literal, path))
        if not any(path for _, path in parts):
            raise ConfigError(f"embed_text={source!r} names no field (e.g. {{title}}\\n{{text}})")
        return cls(source, tuple(parts))

    @property
    def fields(self) -> tuple[str, ...]:
        """The top-level names the template reads, in order of first use."""
        return tuple(dict.fromkeys(path[0] for _, path in self.parts if path))

    def render(self, record: Mapping[str, Any]) -> str | None:
        out: list[str] = []
        for literal, path in self.parts:
            out.append(literal)
            if path:
                value = _lookup(record, path)
                out.append("" if value is None else value if isinstance(value, str) else str(value))
        text = "".join(out)
        return text or None


def _lookup(record: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record.get(path[0])
    for key in path[1:]:
        if isinstance(value, str):  # a json column read as text
            try:
                value = json.loads(value)
            except ValueError:
                return None
        value = value.get(key) if isinstance(value, dict) else None
    return value


# --- LlamaIndex: MetadataMode.EMBED ------------------------------------------------------

_MULTIMODAL_NODES = frozenset({"Node", "Document", "ImageDocument"})


def llamaindex_embed_text(node: Mapping[str, Any], text: str, node_type: str | None) -> str:
    """What ``node.get_content(MetadataMode.EMBED)`` returned when LlamaIndex embedded the
    node (llama-index-core 0.10-0.14, ``schema.py``), from the node's stored JSON.

    ``TextNode`` and its subclasses strip the metadata string before formatting; ``Node``
    and ``Document`` (``text_resource``) do not. Both strip the result.
    """
    metadata = node.get("metadata")
    if not isinstance(metadata, dict):
        return text
    excluded = node.get("excluded_embed_metadata_keys") or []
    key_template = node.get("metadata_template", "{key}: {value}")
    separator = node.get("metadata_separator", node.get("metadata_seperator", "\n"))
    text_template = node.get("text_template", "{metadata_str}\n\n{content}")
    try:
        metadata_str = str(separator).join(
            str(key_template).format(key=key, value=str(value))
            for key, value in metadata.items()
            if key not in excluded
        )
        multimodal = node_type in _MULTIMODAL_NODES or (
            node_type is None and "text" not in node and "text_resource" in node
        )
        if not multimodal:
            metadata_str = metadata_str.strip()
        if not metadata_str:
            return text
        return str(text_template).format(content=text, metadata_str=metadata_str).strip()
    except (KeyError, IndexError, ValueError, AttributeError):  # LlamaIndex would have failed
        return text


def _node(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        return {}
    try:
        node = json.loads(raw)
    except ValueError:
        return {}
    return node if isinstance(node, dict) else {}


def _node_text(node: Mapping[str, Any]) -> str | None:
    """The node's own text: ``text``, or ``text_resource.text`` in the multimodal node
    classes of llama-index-core 0.12+."""
    text = node.get("text")
    if not isinstance(text, str) or not text:
        resource = node.get("text_resource")
        text = resource.get("text") if isinstance(resource, dict) else None
    return text if isinstance(text, str) and text else None


# --- Qdrant: the text lives in the payload -----------------------------------------------


@dataclass(frozen=True)
class PayloadLayout:
    """A payload field that holds the text as a plain string."""

    name: str  # plain, langchain, haystack, llamaindex, or custom
    field: str
    template: EmbedTemplate | None = None

    def read(self, payload: Mapping[str, Any] | None) -> str | None:
        """The text the framework embedded for this payload."""
        if self.template is not None:
            return self.template.render(payload or {})
        return self._read(payload or {})

    def _read(self, payload: Mapping[str, Any]) -> str | None:
        value = payload.get(self.field)
        return value if isinstance(value, str) and value else None

    def write(self, payload: Mapping[str, Any], text: str | None) -> dict[str, Any]:
        """The payload with ``text`` stored where this layout keeps it (None: unchanged).

        A payload that already reads as ``text`` is kept as it is: a re-index copies the
        source payload, whose fields are what the embedded text was built from."""
        written = dict(payload)
        if text is None or self.read(payload) == text:
            return written
        if self.template is not None:
            raise ValueError(
                f"cannot store a text through embed_text={self.template.source!r}; "
                "write the fields it reads"
            )
        return self._write(written, text)

    def _write(self, payload: dict[str, Any], text: str) -> dict[str, Any]:
        payload[self.field] = text
        return payload

    def with_template(self, template: EmbedTemplate | None) -> PayloadLayout:
        return replace(self, template=template) if template else self


@dataclass(frozen=True)
class NodeContentLayout(PayloadLayout):
    """LlamaIndex: ``_node_content`` is the node serialised as JSON; what was embedded is
    its EMBED content (metadata lines, then the text)."""

    def _read(self, payload: Mapping[str, Any]) -> str | None:
        node = _node(payload.get(self.field))
        text = _node_text(node)
        if text is None:
            return None
        node_type = payload.get("_node_type")
        return llamaindex_embed_text(node, text, node_type if isinstance(node_type, str) else None)

    def _write(self, payload: dict[str, Any], text: str) -> dict[str, Any]:
        node = _node(payload.get(self.field))
        node["text"] = text
        payload[self.field] = json.dumps(node, ensure_ascii=False)
        return payload


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
    payloads: Iterable[Mapping[str, Any] | None],
    text_field: str | None = None,
    template: EmbedTemplate | None = None,
) -> PayloadLayout | None:
    """The layout of these payloads, or None when no known text field is present.

    An explicit ``text_field`` wins; it is named after the framework whose field it is,
    ``custom`` otherwise. With a ``template``, the layout detected (or a ``custom`` one
    on the template's first field) builds the embedded text from the template.
    """
    if text_field:
        known = next((layout for layout in PAYLOAD_LAYOUTS if layout.field == text_field), None)
        return (known or PayloadLayout("custom", text_field)).with_template(template)
    keys: set[str] = set()
    for payload in payloads:
        keys.update(payload or {})
    found = next((layout for layout in PAYLOAD_LAYOUTS if layout.field in keys), None)
    if found is None and template is not None:
        found = PayloadLayout("custom", template.fields[0])
    return found.with_template(template) if found else None


# --- pgvector: the text lives in a column ------------------------------------------------

TEXT_TYPES = frozenset({"text", "varchar", "bpchar", "citext", "name"})  # pg_type.typname


@dataclass(frozen=True)
class TableLayout:
    """A text column, the id column, and the json column holding the framework's metadata
    (``filter=`` keys that are not columns are looked up there)."""

    name: str  # plain, langchain, llamaindex, pgai, haystack, or custom
    text_column: str
    id_column: str | None = None  # None: the primary key decides
    metadata_column: str | None = None
    template: EmbedTemplate | None = None

    @property
    def source_columns(self) -> tuple[str, ...]:
        """The columns the embedded text is built from (the text column first)."""
        extra = self.template.fields if self.template else self._extra_columns()
        return tuple(dict.fromkeys((self.text_column, *extra)))

    @property
    def derived(self) -> bool:
        """Whether the embedded text may differ from the text column's value."""
        return len(self.source_columns) > 1 or self.template is not None

    def embedded(self, row: Mapping[str, Any]) -> str | None:
        """The text the framework embedded for this row (``row``: column -> value)."""
        if self.template is not None:
            return self.template.render(row)
        return self._embedded(row)

    def _extra_columns(self) -> tuple[str, ...]:
        return ()

    def _embedded(self, row: Mapping[str, Any]) -> str | None:
        return _text(row.get(self.text_column))

    def with_template(self, template: EmbedTemplate | None) -> TableLayout:
        return replace(self, template=template) if template else self


@dataclass(frozen=True)
class LlamaIndexTableLayout(TableLayout):
    """LlamaIndex PGVectorStore: ``text`` holds the node's text, ``metadata_`` the node
    JSON without it (``_node_content``); what was embedded is its EMBED content."""

    def _extra_columns(self) -> tuple[str, ...]:
        return (self.metadata_column,) if self.metadata_column else ()

    def _embedded(self, row: Mapping[str, Any]) -> str | None:
        text = _text(row.get(self.text_column))
        metadata = _node(row.get(self.metadata_column)) if self.metadata_column else {}
        node = _node(metadata.get("_node_content"))
        if text is None or not node:
            return text
        node_type = metadata.get("_node_type")
        return llamaindex_embed_text(node, text, node_type if isinstance(node_type, str) else None)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text or None


TableRule = Callable[[str, Collection[str]], TableLayout | None]


def _langchain(table: str, columns: Collection[str]) -> TableLayout | None:
    """langchain-postgres PGVector (``id``) and the older langchain-community one (``uuid``)."""
    if table == "langchain_pg_embedding" or {"document", "cmetadata"} <= set(columns):
        return TableLayout(
            "langchain", "document", "id" if "id" in columns else "uuid", "cmetadata"
        )
    return None


def _langchain_pgvectorstore(table: str, columns: Collection[str]) -> TableLayout | None:
    """langchain-postgres PGVectorStore/PGEngine: any table name, ``langchain_id``,
    ``content``, ``embedding``, ``langchain_metadata`` (plus optional metadata columns)."""
    if {"langchain_id", "content"} <= set(columns):
        metadata = "langchain_metadata" if "langchain_metadata" in columns else None
        return TableLayout("langchain", "content", "langchain_id", metadata)
    return None


def _llamaindex(table: str, columns: Collection[str]) -> TableLayout | None:
    """LlamaIndex PGVectorStore: ``data_<name>`` with text, node_id, metadata_."""
    if table.startswith("data_") and {"text", "node_id", "metadata_"} <= set(columns):
        return LlamaIndexTableLayout("llamaindex", "text", "id", "metadata_")
    return None


def _pgai(table: str, columns: Collection[str]) -> TableLayout | None:
    """pgai vectorizer: ``<name>_embedding_store`` with chunk and embedding_uuid."""
    if {"chunk", "embedding_uuid"} <= set(columns):
        return TableLayout("pgai", "chunk", "embedding_uuid")
    return None


def _haystack(table: str, columns: Collection[str]) -> TableLayout | None:
    """Haystack's PgvectorDocumentStore: ``haystack_documents`` with content and meta."""
    if "content" in columns and (table == "haystack_documents" or "meta" in columns):
        return TableLayout("haystack", "content", "id", "meta" if "meta" in columns else None)
    return None


def _plain(table: str, columns: Collection[str]) -> TableLayout | None:
    return TableLayout("plain", "text") if "text" in columns else None


TABLE_RULES: tuple[TableRule, ...] = (
    _langchain,
    _langchain_pgvectorstore,
    _llamaindex,
    _pgai,
    _haystack,
    _plain,
)


def table_layout(
    table: str,
    columns: Collection[str],
    text_column: str | None = None,
    template: EmbedTemplate | None = None,
) -> TableLayout | None:
    """The layout of a table, or None when no known text column is present.

    ``text_column`` names the text column (a ``custom`` layout unless it is the detected
    one); a ``template`` builds the embedded text instead of the layout's own rule."""
    detected = next((layout for rule in TABLE_RULES if (layout := rule(table, columns))), None)
    if text_column:
        if detected is None or detected.text_column != text_column:
            detected = TableLayout(
                "custom",
                text_column,
                detected.id_column if detected else None,
                detected.metadata_column if detected else None,
            )
    elif detected is None and template is not None:
        detected = TableLayout("custom", template.fields[0])
    return detected.with_template(template) if detected else None
