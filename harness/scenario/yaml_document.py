"""Reading one YAML document together with the line of every key, so errors can name a line.

PyYAML's composed node tree keeps a mark per node; constructing the data from that same tree
(rather than parsing twice) keeps the two in step.
"""

from __future__ import annotations

import dataclasses

import yaml

from harness.scenario.problems import Location

# Aliases can expand a small file into an exponential tree; a scenario is a few hundred keys.
MAX_NODES = 20_000


class YamlDocumentError(ValueError):
    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.line = line


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class YamlDocument:
    data: object
    lines: dict[Location, int]  # 1-based line of each mapping key and sequence item
    duplicate_keys: tuple[tuple[Location, int], ...]

    def line_of(self, loc: Location) -> int:
        """The line of ``loc``, or of its nearest enclosing key when ``loc`` itself is absent (a missing key)."""
        for end in range(len(loc), 0, -1):
            line = self.lines.get(tuple(_as_key(part) for part in loc[:end]))
            if line is None and isinstance(loc[end - 1], int):  # a mapping key YAML read as an int
                line = self.lines.get((*(_as_key(part) for part in loc[: end - 1]), str(loc[end - 1])))
            if line is not None:
                return line
        return 1


def _as_key(part: str | int) -> str | int:
    return part if isinstance(part, int) else str(part)


def read_yaml_document(text: str) -> YamlDocument:
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # checks for unprintable characters already
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        raise YamlDocumentError(
            f"malformed YAML: {error.problem or error.context}", mark.line + 1 if mark else None
        ) from None
    except yaml.reader.ReaderError as error:
        character = f"U+{error.character:04X}" if isinstance(error.character, int) else repr(error.character)
        raise YamlDocumentError(
            f"malformed YAML: character {character} at offset {error.position} is not allowed in YAML ({error.reason})",
            _line_at(text, error.position),
        ) from None
    except yaml.YAMLError as error:
        raise YamlDocumentError(f"malformed YAML: {error}", None) from None
    except RecursionError:
        # PyYAML composes and constructs recursively; a scenario nests a handful of levels.
        raise YamlDocumentError("YAML nested too deeply; a scenario nests a few levels", None) from None
    finally:
        if loader is not None:
            loader.dispose()
    lines: dict[Location, int] = {}
    duplicates: list[tuple[Location, int]] = []
    if node is not None:
        try:
            _index(node, (), lines, duplicates, budget=[MAX_NODES])
        except RecursionError:
            raise YamlDocumentError("YAML nested too deeply (a recursive alias?)", node.start_mark.line + 1) from None
    return YamlDocument(data=data, lines=lines, duplicate_keys=tuple(duplicates))


def _line_at(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _index(
    node: yaml.Node,
    loc: Location,
    lines: dict[Location, int],
    duplicates: list[tuple[Location, int]],
    budget: list[int],
) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise YamlDocumentError(
            f"more than {MAX_NODES} YAML nodes (alias expansion?); a scenario needs far fewer", node.start_mark.line + 1
        )
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*loc, str(key_node.value))
            if child in lines:
                duplicates.append((child, key_node.start_mark.line + 1))
            else:
                lines[child] = key_node.start_mark.line + 1
            _index(value_node, child, lines, duplicates, budget)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*loc, index)] = item.start_mark.line + 1
            _index(item, (*loc, index), lines, duplicates, budget)
