"""YAML for spec and site files: safe, strict about duplicate keys, bounded in size.

Aliases are allowed (an anchor shared by two samplers is a fair use) but their
*expansion* is bounded: PyYAML builds an aliased node once and shares it, so a "billion
laughs" document (nine levels of nine aliases each) loads instantly into a small object
graph whose tree view has 9⁹ nodes, and the first code that walks it (validation,
hashing, JSON) never finishes. After composing, and before anything is constructed, the
expanded size of the node graph is counted in linear time (each node once, memoised);
more than `MAX_EXPANDED_NODES` nodes, or an alias that contains itself, is refused.
Bounding was chosen over refusing aliases outright because real specs use anchors for
repeated settings and stay tiny (a spec has about a hundred nodes).
"""

from __future__ import annotations

from typing import Any

import yaml

from alflow.errors import InputError

MAX_EXPANDED_NODES = 100_000


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (YAML keeps the last one silently) and
    documents whose aliases expand past `MAX_EXPANDED_NODES` nodes."""

    def compose_document(self):
        node = super().compose_document()
        _check_expansion(node)
        return node


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node | None) -> None:
    """Expanded node count of the composed graph (aliases counted where they are used)."""
    if root is None:
        return
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, closing = stack.pop()
        key = id(node)
        if closing:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in _children(node))
            if sizes[key] > MAX_EXPANDED_NODES:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"aliases expand to more than {MAX_EXPANDED_NODES:,} values (an alias bomb?); "
                    "write the values out", node.start_mark)
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise yaml.constructor.ConstructorError(
                None, None, "an alias refers to a node that contains it (a recursive structure)",
                node.start_mark)
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
        except TypeError:  # unhashable key: let the base constructor complain
            break
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark,
                f"duplicate key {key!r}", key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML text; every problem is one InputError naming `source` and the position."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = exc.problem or exc.context
        raise InputError(f"invalid YAML{where}: {reason}", source=source) from None
    except yaml.YAMLError as exc:
        first = (str(exc).strip().splitlines() or ["?"])[0]
        raise InputError(f"invalid YAML: {first}", source=source) from None
    except RecursionError:
        raise InputError("invalid YAML: nested too deeply", source=source) from None
