"""A schema-less GraphQL executor for the OpenCTI emulator.

pycti sends fixed query strings; writing (and keeping up with) OpenCTI's whole schema would be
a project of its own. Instead the query is parsed with graphql-core, each top-level field is
dispatched to a resolver by name, and the selection set is projected onto plain dicts: what the
emulator knows is returned, every other selected field is null (GraphQL clients, and pycti's
`process_multiple_fields`, tolerate nulls). Unknown top-level fields are errors that name the
field, so a gap shows at once instead of as a silent null.

Objects are dicts. Special keys: `__typename` (a str) and `__types` (the type names inline
fragments may match: the concrete type and its interfaces); `__strict__` makes unknown
fields errors (used for mutation payloads such as `workEdit`). A value may be a callable: it is
called with the field's arguments as keyword arguments, lazily, only when selected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    parse,
)
from graphql.utilities import value_from_ast_untyped

EMULATOR = "vt_pipeline OpenCTI emulator"
Resolver = Callable[..., Any]


class GraphQLFault(Exception):
    """A GraphQL error the way OpenCTI shapes it: `name` at top level and as extensions.code."""

    def __init__(self, message: str, name: str = "UNSUPPORTED", data: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.name = name
        self.data = data or {}

    def to_json(self, path: list[str] | None = None) -> dict[str, Any]:
        error: dict[str, Any] = {
            "message": self.message,
            "name": self.name,
            "extensions": {"code": self.name, "data": self.data},
        }
        if path:
            error["path"] = path
        return error


def unsupported(what: str) -> GraphQLFault:
    return GraphQLFault(f"{EMULATOR}: unsupported operation {what}", "UNSUPPORTED")


@dataclass
class Request:
    """One parsed GraphQL request: the operation, its variables and fragments."""

    operation: OperationDefinitionNode
    variables: dict[str, Any]
    fragments: dict[str, FragmentDefinitionNode] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.operation.operation.value  # "query" | "mutation" | "subscription"

    @property
    def root_fields(self) -> list[str]:
        """Names of the top-level fields (what the operation does), for logs and stats."""
        selection = self.operation.selection_set
        return [nodes[0].name.value for nodes in _collect(self, selection, None).values()]


def parse_request(
    query: str, variables: Mapping[str, Any] | None, operation_name: str | None = None
) -> Request:
    """Parse `query`; GraphQLFault (GRAPHQL_PARSE_FAILED) on syntax errors."""
    try:
        document = parse(query)
    except GraphQLError as error:
        raise GraphQLFault(f"Syntax error: {error.message}", "GRAPHQL_PARSE_FAILED") from None
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    if operation_name:
        operations = [o for o in operations if o.name and o.name.value == operation_name]
    if not operations:
        raise GraphQLFault("No operation in the GraphQL document", "GRAPHQL_VALIDATION_FAILED")
    operation = operations[0]
    values = dict(variables or {})
    for definition in operation.variable_definitions or ():
        name = definition.variable.name.value
        if name not in values and definition.default_value is not None:
            values[name] = value_from_ast_untyped(definition.default_value, values)
    return Request(operation, values, fragments)


def execute(request: Request, resolvers: Mapping[str, Resolver]) -> dict[str, Any]:
    """Run every top-level field through its resolver; the GraphQL response as a dict."""
    data: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []
    for key, nodes in _collect(request, request.operation.selection_set, None).items():
        node = nodes[0]
        name = node.name.value
        if name == "__typename":
            data[key] = request.kind.capitalize()
            continue
        resolver = resolvers.get(name)
        try:
            if resolver is None:
                raise unsupported(f"{request.kind} {name}")
            value = resolver(**_arguments(request, node))
            data[key] = project(request, value, _merged_selection(nodes), name)
        except GraphQLFault as fault:
            data[key] = None
            errors.append(fault.to_json([key]))
    response: dict[str, Any] = {"data": data}
    if errors:
        response["errors"] = errors
    return response


def project(request: Request, value: Any, selection: SelectionSetNode | None, path: str) -> Any:
    """Shape `value` like the selection set asks (aliases, fragments, arguments)."""
    if callable(value):
        value = value()
    if selection is None or value is None:
        return value
    if isinstance(value, list | tuple):
        return [project(request, item, selection, path) for item in value]
    if not isinstance(value, Mapping):
        return value
    out: dict[str, Any] = {}
    strict = bool(value.get("__strict__"))
    for key, nodes in _collect(request, selection, value).items():
        node = nodes[0]
        name = node.name.value
        if name == "__typename":
            out[key] = value.get("__typename")
            continue
        if strict and name not in value:
            raise unsupported(f"{path}.{name}")
        item = value.get(name)
        if callable(item):
            item = item(**_arguments(request, node))
        out[key] = project(request, item, _merged_selection(nodes), f"{path}.{name}")
    return out


def _arguments(request: Request, node: FieldNode) -> dict[str, Any]:
    return {
        arg.name.value: value_from_ast_untyped(arg.value, request.variables)
        for arg in node.arguments or ()
    }


def _merged_selection(nodes: list[FieldNode]) -> SelectionSetNode | None:
    sets = [n.selection_set for n in nodes if n.selection_set is not None]
    if not sets:
        return None
    if len(sets) == 1:
        return sets[0]
    return SelectionSetNode(selections=tuple(s for ss in sets for s in ss.selections))


def _applies(type_condition: str | None, obj: Mapping[str, Any] | None) -> bool:
    """Whether `... on Type` applies to obj; objects without type information take them all."""
    if type_condition is None or obj is None:
        return True
    types = obj.get("__types")
    if types is None:
        typename = obj.get("__typename")
        return typename is None or typename == type_condition
    return type_condition in types


def _collect(
    request: Request, selection: SelectionSetNode, obj: Mapping[str, Any] | None
) -> dict[str, list[FieldNode]]:
    """Fields of a selection set by response key, fragments expanded (GraphQL CollectFields)."""
    fields: dict[str, list[FieldNode]] = {}

    def walk(selection_set: SelectionSetNode) -> None:
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                key = selection.alias.value if selection.alias else selection.name.value
                fields.setdefault(key, []).append(selection)
            elif isinstance(selection, InlineFragmentNode):
                condition = (
                    selection.type_condition.name.value if selection.type_condition else None
                )
                if _applies(condition, obj):
                    walk(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode):
                fragment = request.fragments.get(selection.name.value)
                if fragment is None:
                    raise GraphQLFault(
                        f"Unknown fragment {selection.name.value}", "GRAPHQL_VALIDATION_FAILED"
                    )
                if _applies(fragment.type_condition.name.value, obj):
                    walk(fragment.selection_set)

    walk(selection)
    return fields
