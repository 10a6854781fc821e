"""Profile YAML read defensively: the node tree is checked (plain tags only, no duplicate keys, bounded
depth and alias expansion) before anything is constructed, and every refusal names its line."""

from __future__ import annotations

import re

import yaml

from tuiwiz.errors import UserError


def mark_line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


# A profile has about a hundred values, four levels deep. Anchors and aliases are allowed,
# but what they expand to is bounded: a "billion laughs" file is refused before it is built.
MAX_VALUES = 10_000
MAX_DEPTH = 32
_TAG = "tag:yaml.org,2002:"
_PLAIN_TAGS = {_TAG + name for name in ("str", "int", "float", "bool", "null", "seq", "map", "merge", "timestamp")}


def _profile_error(message: str, file: str, node: yaml.Node | None = None, hint: str | None = None,
                   field: str | None = None) -> UserError:
    line = mark_line(node) if node is not None else None
    return UserError(message, hint=hint, file=file, line=line, field=field, kind="profile")


def _check_tree(root: yaml.Node, file: str) -> None:
    """Refuse what YAML allows but a profile must not hold, before anything is constructed.

    Each node is examined once (aliases share nodes), so this is linear in the file's size
    whatever its aliases expand to.
    """
    measured: dict[int, tuple[int, int]] = {}  # id -> (values it expands to, levels below it)
    open_nodes: set[int] = set()

    def measure(node: yaml.Node, depth: int, path: str) -> tuple[int, int]:
        key = id(node)
        if key in open_nodes:
            raise _profile_error("an alias refers to the anchor that contains it (a recursive structure)", file,
                                 node, hint="a profile is a tree: remove the alias")
        if key not in measured:
            if depth > MAX_DEPTH:
                raise _profile_error(f"nested more than {MAX_DEPTH} levels deep", file, node,
                                     hint="a profile's sections are at most four levels deep")
            open_nodes.add(key)
            measured[key] = _measure_new(node, depth, path, measure, file)
            open_nodes.discard(key)
        size, height = measured[key]
        if depth + height > MAX_DEPTH:
            raise _profile_error(f"nested more than {MAX_DEPTH} levels deep", file, node,
                                 hint="a profile's sections are at most four levels deep")
        return size, height

    size, _ = measure(root, 0, "")
    if size > MAX_VALUES:
        raise _profile_error(
            f"the profile expands to more than {MAX_VALUES:,} values: its aliases (*name) repeat "
            "anchors (&name) that themselves hold aliases", file, root,
            hint="write the values out; a profile needs no aliases",
        )


def _measure_new(node: yaml.Node, depth: int, path: str, measure, file: str) -> tuple[int, int]:
    field = path or None
    if node.tag not in _PLAIN_TAGS:
        tag = node.tag.replace(_TAG, "!!")
        raise _profile_error(
            f"the YAML tag {tag} is not allowed: a profile holds plain values (text, numbers, true/false, lists, "
            "mappings), never objects", file, node, hint=f"remove {tag}", field=field,
        )
    if isinstance(node, yaml.ScalarNode):
        if node.tag == _TAG + "int" and len(node.value) > 40:
            raise _profile_error(f"the number {node.value[:20]}... is too large", file, node, field=field)
        try:
            node.value.encode("utf-8")
        except UnicodeEncodeError:
            raise _profile_error("this value holds an invalid character (a lone surrogate escape like \\ud800)",
                                 file, node, hint="remove the \\u escape", field=field) from None
        return 1, 0
    children: list[tuple[yaml.Node, str]] = []
    if isinstance(node, yaml.SequenceNode):
        children = [(item, path) for item in node.value]
    else:
        seen: dict[object, yaml.Node] = {}
        for key, value in node.value:
            inner = path
            if isinstance(key, yaml.ScalarNode) and key.tag != _TAG + "merge":
                inner = f"{path}.{key.value}" if path else str(key.value)
                if key.value in seen:
                    first = mark_line(seen[key.value])
                    raise _profile_error(
                        f"'{key.value}' is set twice in this section (first on line {first}); YAML would silently "
                        "keep only the last one", file, key, hint="remove one of the two", field=inner,
                    )
                seen[key.value] = key
            children += [(key, inner), (value, inner)]
    size, height = 1, 0
    for child, child_path in children:
        child_size, child_height = measure(child, depth + 1, child_path)
        size += child_size
        height = max(height, child_height + 1)
        if size > MAX_VALUES:
            break  # the caller reports it
    return size, height


_FLOW = re.compile(r"[\[\]{}]|^[^\s#\[\]{}-]", re.M)


def _deep_flow_line(text: str) -> int | None:
    """The line where [ and { brackets first nest past MAX_DEPTH, if they do.

    PyYAML's scanner is quadratic in flow nesting (seconds for a few thousand brackets), so
    this is counted first. Brackets in quoted text count too; a key at column 0 ends any flow.
    """
    depth = 0
    for match in _FLOW.finditer(text):
        char = match.group()
        if char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return text.count("\n", 0, match.start()) + 1
        elif char in "]}":
            depth = max(0, depth - 1)
        else:
            depth = 0
    return None


def _unreadable_scalar(loader: yaml.SafeLoader, root: yaml.Node) -> yaml.ScalarNode | None:
    """The first scalar whose tag's constructor fails on its text (only looked for after a failure)."""
    todo, seen = [root], set()
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            try:
                loader.yaml_constructors[node.tag](loader, node)
            except Exception:
                return node
        elif isinstance(node, yaml.SequenceNode):
            todo.extend(reversed(node.value))
        else:
            todo.extend(n for pair in reversed(node.value) for n in reversed(pair))
    return None


def compose(text: str, file: str):
    """(root node, plain data) of YAML text, checked before it is constructed. Raises UserError."""
    deep = _deep_flow_line(text)
    if deep is not None:
        raise UserError(f"nested more than {MAX_DEPTH} levels deep", hint="a profile's sections are at most four "
                        "levels deep", file=file, line=deep, kind="profile")
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:  # checked on construction: control characters
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        raise UserError(f"not valid YAML: the control character #x{exc.character:04x} is not allowed", file=file,
                        line=line, hint="remove it; only tabs and line breaks may appear", kind="profile") from None
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        _check_tree(root, file)
        try:
            return root, loader.construct_document(root)
        except (ValueError, TypeError, IndexError, KeyError, OverflowError):  # `!!int x`, `!!int ` (PyYAML)
            node = _unreadable_scalar(loader, root)
            raise _profile_error(
                f"the value {node.value!r} cannot be read as {node.tag.replace(_TAG, '!!')}" if node else
                "a value cannot be read as the type its tag names", file, node, hint="remove the !! tag",
            ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        hint = "check the indentation and quoting near this line"
        if "'\\t'" in problem:
            hint = "YAML indents with spaces, never tabs: replace the tabs with spaces"
        elif "another document" in problem:
            hint = "a profile is one YAML document: remove the second '---' and what follows, or merge them"
        raise UserError(f"not valid YAML: {problem}", hint=hint, file=file,
                        line=mark.line + 1 if mark else None, kind="profile") from None
    except RecursionError:  # the composer recurses: hundreds of levels end here, before _check_tree
        raise UserError(f"nested more than {MAX_DEPTH} levels deep", hint="a profile's sections are at most four "
                        "levels deep", file=file, line=loader.line + 1, kind="profile") from None
    finally:
        loader.dispose()
