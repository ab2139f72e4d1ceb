"""AWS bodies seen through their botocore shape: member names to read, wire nodes to rewrite.

Masking finds values by member name (``$.Parameter.Value``) and must replace
exactly those values in the body's own format, so that the SDK still parses
it. A ``WireDocument`` parses a body once (JSON, CBOR, XML or a query form),
offers a plain ``view`` keyed by member names (what JSONPath runs on), and
remembers for each scalar leaf how to overwrite it in the wire tree; ``dump``
serialises the changed tree. Header-bound members of REST protocols are
leaves too: masking them yields header updates.
"""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Mapping
from datetime import UTC
from typing import Any
from urllib.parse import parse_qsl, urlencode

import botocore.model
import cbor2

Step = str | int
Steps = tuple[Step, ...]
Shape = botocore.model.Shape

MARKER = "*** masked by awsgate ***"
MARKER_BYTES = MARKER.encode()
MARKER_BASE64 = base64.b64encode(MARKER_BYTES).decode()

NUMBERS = frozenset({"integer", "long", "float", "double", "byte", "short", "bigdecimal"})
_TEXT_MARKERS = {"string": MARKER, "blob": MARKER_BASE64, "boolean": "false", "document": MARKER}


class WireError(ValueError):
    """The body does not parse in the format its protocol promises."""


def text_marker(shape: Shape | None) -> str | None:
    """The marker for a leaf carried as text (XML, forms, headers); None: left as is."""
    kind = shape.type_name if shape is not None else "document"
    if kind in NUMBERS:
        return "0"
    if shape is not None and shape.serialization.get("jsonvalue"):
        return base64.b64encode(json.dumps(MARKER).encode()).decode()
    return _TEXT_MARKERS.get(kind)  # timestamps are not masked


def _value_marker(shape: Shape | None, binary_blobs: bool) -> Any:
    """The marker for a leaf carried as a typed value (JSON, CBOR); None: left as is."""
    kind = shape.type_name if shape is not None else "document"
    if kind in NUMBERS:
        return 0
    if kind == "boolean":
        return False
    if kind == "blob":
        return MARKER_BYTES if binary_blobs else MARKER_BASE64
    return MARKER if kind in ("string", "document") else None


class WireDocument:
    """One parsed body: the member-name view, its writable leaves, and how to dump it."""

    def __init__(self) -> None:
        self.view: dict[str, Any] = {}
        self.leaves: dict[Steps, Callable[[], None]] = {}
        self.header_updates: dict[str, str] = {}
        self.changed = False
        self._dump: Callable[[], bytes] = lambda: b""

    def add_leaf(self, steps: Steps, write: Callable[[], None]) -> None:
        self.leaves[steps] = write

    def mask(self, steps: Steps) -> bool:
        """Overwrite every leaf at or under ``steps``; whether there was one."""
        depth = len(steps)
        hits = [leaf for leaf in self.leaves if leaf[:depth] == steps]
        for leaf in hits:
            self.leaves.pop(leaf)()
        self.changed = self.changed or bool(hits)
        return bool(hits)

    def dump(self) -> bytes:
        return self._dump()


# -- JSON and CBOR: a tree of dicts and lists ----------------------------------


class _TreeWalker:
    """Walks a decoded JSON or CBOR tree by shape, registering leaves on ``doc``."""

    def __init__(self, doc: WireDocument, wire_names: bool, binary_blobs: bool) -> None:
        self.doc = doc
        self.wire_names = wire_names  # JSON honours locationName; smithy CBOR does not
        self.binary_blobs = binary_blobs

    def walk(
        self, shape: Shape | None, node: Any, steps: Steps, write: Callable[[Any], None]
    ) -> Any:
        kind = shape.type_name if shape is not None else "document"
        if shape is not None and shape.metadata.get("document"):
            kind = "document"
        if kind == "structure" and isinstance(node, dict):
            assert shape is not None
            return self._structure(shape, node, steps)
        if kind in ("list", "document") and isinstance(node, list):
            member = shape.member if kind == "list" else None  # type: ignore[union-attr]
            return [
                self.walk(member, item, (*steps, index), _setter(node, index))
                for index, item in enumerate(node)
            ]
        if kind in ("map", "document") and isinstance(node, dict):
            value_shape = shape.value if kind == "map" else None  # type: ignore[union-attr]
            return {
                key: self.walk(value_shape, item, (*steps, key), _setter(node, key))
                for key, item in list(node.items())
            }
        marker = _value_marker(shape, self.binary_blobs)
        if marker is not None and node is not None:
            self.doc.add_leaf(steps, lambda: write(marker))
        return node

    def _structure(self, shape: Shape, node: dict[str, Any], steps: Steps) -> dict[str, Any]:
        view = {}
        for name, member in shape.members.items():  # type: ignore[attr-defined]
            if member.serialization.get("location"):
                continue
            key = member.serialization.get("name", name) if self.wire_names else name
            if node.get(key) is not None:
                view[name] = self.walk(member, node[key], (*steps, name), _setter(node, key))
        return view


def _setter(container: Any, key: Any) -> Callable[[Any], None]:
    def write(value: Any) -> None:
        container[key] = value

    return write


def _json_tree(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"not JSON: {type(exc).__name__}") from exc


def _cbor_tree(body: bytes) -> Any:
    try:
        return cbor2.loads(body)
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError, OverflowError) as exc:
        raise WireError(f"not CBOR: {type(exc).__name__}") from exc


def _dump_json(tree: Any) -> bytes:
    return json.dumps(tree, separators=(",", ":")).encode()


def _dump_cbor(tree: Any) -> bytes:
    return cbor2.dumps(tree, datetime_as_timestamp=True, timezone=UTC)


# -- XML: ElementTree, names as botocore's XML parsers read them ---------------


def _tag(element: ElementTree.Element) -> str:
    return element.tag.rpartition("}")[2]


def _xml_name(member: Shape, name: str) -> str:
    """The element name of a structure member (flattened lists use their member's name)."""
    if member.type_name == "list" and member.serialization.get("flattened"):
        flattened_name = member.member.serialization.get("name")  # type: ignore[attr-defined]
        if flattened_name is not None:
            return flattened_name
    return member.serialization.get("name", name)


def _children(element: ElementTree.Element) -> dict[str, list[ElementTree.Element]]:
    grouped: dict[str, list[ElementTree.Element]] = {}
    for child in element:
        grouped.setdefault(_tag(child), []).append(child)
    return grouped


def _xml_scalar(shape: Shape, text: str | None) -> Any:
    text = text or ""
    try:
        if shape.type_name in ("integer", "long", "byte", "short"):
            return int(text)
        if shape.type_name in ("float", "double"):
            return float(text)
    except ValueError:
        return text
    if shape.type_name == "boolean":
        return text == "true"
    return text


class _XmlWalker:
    def __init__(self, doc: WireDocument) -> None:
        self.doc = doc

    def walk(self, shape: Shape, nodes: list[ElementTree.Element], steps: Steps) -> Any:
        kind = shape.type_name
        element = nodes[0]
        if kind == "structure":
            children = _children(element)
            view = {}
            for name, member in shape.members.items():  # type: ignore[attr-defined]
                if member.serialization.get("location"):
                    continue
                found = children.get(_xml_name(member, name))
                if found:
                    view[name] = self.walk(member, found, (*steps, name))
            return view
        if kind == "list":
            member = shape.member  # type: ignore[attr-defined]
            if shape.serialization.get("flattened"):
                items = nodes
            else:
                tag = member.serialization.get("name", "member")
                items = [child for child in element if _tag(child) == tag]
            return [self.walk(member, [item], (*steps, index)) for index, item in enumerate(items)]
        if kind == "map":
            return self._map(shape, nodes, steps)
        marker = text_marker(shape)
        if marker is not None:
            self.doc.add_leaf(steps, lambda: setattr(element, "text", marker))
        return _xml_scalar(shape, element.text)

    def _map(self, shape: Shape, nodes: list[ElementTree.Element], steps: Steps) -> dict[str, Any]:
        key_shape, value_shape = shape.key, shape.value  # type: ignore[attr-defined]
        key_name = key_shape.serialization.get("name") or "key"
        value_name = value_shape.serialization.get("name") or "value"
        if shape.serialization.get("flattened"):
            entries = nodes
        else:
            entries = [child for child in nodes[0] if _tag(child) == "entry"]
        view = {}
        for entry in entries:
            parts = _children(entry)
            if key_name in parts and value_name in parts:
                key = parts[key_name][0].text or ""
                view[key] = self.walk(value_shape, parts[value_name], (*steps, key))
        return view


def _xml_root(body: bytes) -> ElementTree.Element:
    try:
        return ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:
        raise WireError(f"not XML: {exc}") from exc


def _dump_xml(root: ElementTree.Element) -> bytes:
    namespace = root.tag[1:].partition("}")[0] if root.tag.startswith("{") else ""
    if namespace:
        try:
            return ElementTree.tostring(
                root, encoding="utf-8", xml_declaration=True, default_namespace=namespace
            )
        except ValueError:
            pass  # elements outside the root's namespace: prefixed names parse as well
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)


# -- query forms (requests of the query and ec2 protocols) ----------------------


class _FormWalker:
    """``A.member.1.B=x`` pairs walked by shape; each pair is one leaf."""

    def __init__(self, doc: WireDocument, pairs: list[tuple[str, str]], ec2: bool) -> None:
        self.doc = doc
        self.pairs = pairs
        self.ec2 = ec2

    def tree(self) -> dict[str, Any]:
        root: dict[str, Any] = {}
        for index, (key, _) in enumerate(self.pairs):
            node = root
            *parents, last = key.split(".")
            for part in parents:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = node[part] = {}
                node = child
            node.setdefault(last, index)
        return root

    def walk(self, shape: Shape, node: Any, steps: Steps) -> Any:
        kind = shape.type_name
        if kind == "structure" and isinstance(node, dict):
            names = self._names(shape)
            view = {}
            for wire, child in node.items():
                name = names.get(wire)
                if name is not None:
                    member = shape.members[name]  # type: ignore[attr-defined]
                    view[name] = self.walk(member, child, (*steps, name))
            return view
        if kind == "list" and isinstance(node, dict):
            member = shape.member  # type: ignore[attr-defined]
            if not self.ec2 and not shape.serialization.get("flattened"):
                node = node.get(member.serialization.get("name", "member"), {})
            items = _numbered(node)
            return [self.walk(member, item, (*steps, index)) for index, item in enumerate(items)]
        if kind == "map" and isinstance(node, dict):
            return self._map(shape, node, steps)
        if isinstance(node, int):
            marker = text_marker(shape)
            if marker is not None:
                self.doc.add_leaf(steps, lambda: self._write(node, marker))
            return self.pairs[node][1]
        return None

    def _map(self, shape: Shape, node: dict[str, Any], steps: Steps) -> dict[str, Any]:
        if not shape.serialization.get("flattened"):
            node = node.get("entry", {})
        key_name = shape.key.serialization.get("name", "key")  # type: ignore[attr-defined]
        value_name = shape.value.serialization.get("name", "value")  # type: ignore[attr-defined]
        view = {}
        for entry in _numbered(node):
            key_index = entry.get(key_name) if isinstance(entry, dict) else None
            if isinstance(key_index, int) and value_name in entry:
                key = self.pairs[key_index][1]
                view[key] = self.walk(shape.value, entry[value_name], (*steps, key))  # type: ignore[attr-defined]
        return view

    def _names(self, shape: Shape) -> dict[str, str]:
        names = {}
        for name, member in shape.members.items():  # type: ignore[attr-defined]
            serialization = member.serialization
            if self.ec2:
                located = serialization.get("name", name)
                wire = serialization.get("queryName") or located[:1].upper() + located[1:]
            else:
                wire = _xml_name(member, name)
            names[wire] = name
        return names

    def _write(self, index: int, marker: str) -> None:
        self.pairs[index] = (self.pairs[index][0], marker)


def _numbered(node: Any) -> list[Any]:
    if not isinstance(node, dict):
        return []
    return [node[key] for key in sorted((k for k in node if k.isdigit()), key=int)]


# -- building documents ---------------------------------------------------------


def parse_body(protocol: str, shape: Shape, body: bytes, doc: WireDocument, steps: Steps) -> Any:
    """Walk ``body`` as ``shape`` under ``steps``; sets ``doc``'s dump; returns the view."""
    if protocol in ("json", "rest-json"):
        tree = _json_tree(body)
        doc._dump = lambda: _dump_json(tree)
        return _TreeWalker(doc, wire_names=True, binary_blobs=False).walk(
            shape, tree, steps, lambda _: None
        )
    if protocol == "smithy-rpc-v2-cbor":
        tree = _cbor_tree(body)
        doc._dump = lambda: _dump_cbor(tree)
        return _TreeWalker(doc, wire_names=False, binary_blobs=True).walk(
            shape, tree, steps, lambda _: None
        )
    if protocol in ("query", "ec2", "rest-xml"):
        root = _xml_root(body)
        doc._dump = lambda: _dump_xml(root)
        start = root
        wrapper = shape.serialization.get("resultWrapper")
        if wrapper:
            start = next((child for child in root if _tag(child) == wrapper), None)
            if start is None:
                raise WireError(f"no <{wrapper}> in the response")
        return _XmlWalker(doc).walk(shape, [start], steps)
    raise WireError(f"unsupported protocol {protocol!r}")


def parse_response(
    protocol: str, shape: Shape, headers: Mapping[str, str], body: bytes
) -> WireDocument:
    """The response body (and, for REST protocols, its header-bound members) as a document."""
    doc = WireDocument()
    if protocol.startswith("rest-"):
        doc.view.update(_header_members(shape, headers, doc))
        payload = shape.serialization.get("payload")
        if payload:
            doc.view[payload] = _payload(protocol, shape.members[payload], payload, body, doc)  # type: ignore[attr-defined]
            return doc
    if body:
        doc.view.update(parse_body(protocol, shape, body, doc, ()))
    else:
        doc._dump = lambda: body
    return doc


def parse_request(protocol: str, shape: Shape, body: bytes) -> WireDocument:
    """The request body as a document (header-bound members are not part of it)."""
    doc = WireDocument()
    if protocol in ("query", "ec2"):
        try:
            pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError as exc:
            raise WireError("form body is not UTF-8") from exc
        walker = _FormWalker(doc, pairs, ec2=protocol == "ec2")
        doc.view = walker.walk(shape, walker.tree(), ()) or {}
        doc._dump = lambda: urlencode(pairs).encode()
        return doc
    payload = shape.serialization.get("payload") if protocol.startswith("rest-") else None
    if payload:
        doc.view[payload] = _payload(protocol, shape.members[payload], payload, body, doc)  # type: ignore[attr-defined]
    elif body:
        doc.view = parse_body(protocol, shape, body, doc, ())
    else:
        doc._dump = lambda: body
    return doc


def _payload(protocol: str, member: Shape, name: str, body: bytes, doc: WireDocument) -> Any:
    """A REST payload member: a structure in the body, or the raw body itself."""
    if member.type_name in ("blob", "string"):
        replaced: list[bytes] = []
        doc._dump = lambda: replaced[-1] if replaced else body
        doc.add_leaf((name,), lambda: replaced.append(MARKER_BYTES))
        return body.decode("utf-8", "replace") if member.type_name == "string" else body
    if not body:
        doc._dump = lambda: body
        return {}
    return parse_body(protocol, member, body, doc, (name,))


def _header_members(shape: Shape, headers: Mapping[str, str], doc: WireDocument) -> dict[str, Any]:
    view: dict[str, Any] = {}
    lowered = {key.lower(): (key, value) for key, value in headers.items()}
    for name, member in shape.members.items():  # type: ignore[attr-defined]
        location = member.serialization.get("location")
        if location == "header":
            found = lowered.get(member.serialization.get("name", name).lower())
            if found is not None:
                view[name] = found[1]
                _header_leaf(doc, (name,), found[0], text_marker(member))
        elif location == "headers":
            prefix = member.serialization.get("name", "").lower()
            view[name] = {}
            for lower, (key, value) in lowered.items():
                if lower.startswith(prefix):
                    suffix = key[len(prefix) :]
                    view[name][suffix] = value
                    _header_leaf(doc, (name, suffix), key, MARKER)
    return view


def _header_leaf(doc: WireDocument, steps: Steps, header: str, marker: str | None) -> None:
    if marker is not None:
        doc.add_leaf(steps, lambda: doc.header_updates.__setitem__(header, marker))
