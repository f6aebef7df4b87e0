"""The generic collection engine of the Neutron API (issue 12): what a list request asks
for (filters, tag filters, `fields`, paging, sorting), parsed once, then applied in Python to
the caller's visible rows (Neutron dicts).

Behaviour follows Neutron's (neutron/api/api_common.py, neutron/api/v2/base.py):
- any other query parameter filters on the top-level attribute of that name; repeated, its
  values are alternatives (OR); booleans parse as neutron-lib's convert_to_boolean
  (true/false/1/0, any case), integers as integers, created_at/updated_at as ISO 8601
  timestamps (400 otherwise; equal to the second); a parameter naming no attribute is 400
  (the `filter-validation` extension);
- `tags` (all of), `tags-any`, `not-tags` (not all of), `not-tags-any` (none of): comma
  separated, repeatable (the `standard-attr-tag` extension);
- `fields` (repeatable): only those attributes in each item;
- `sort_key`/`sort_dir` (repeatable, paired; asc by default): unknown key 400; `id` ends
  every order so that it is total;
- `limit`/`marker`/`page_reverse`: a page after (before, reversed) the marker's item, with
  `<collection>_links` [{rel: next|previous, href}] built as get_pagination_links does: a
  `next` unless a forward page came back short, a `previous` unless a reversed one did.

Without sort keys the order is the collection's (creation order, as the native /v1 lists).
A collection plugs in by describing its attributes (Collection); 1000 rows take a few ms.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from app.domain.neutron import (
    NeutronBadRequest,
    NeutronError,
    convert_to_boolean,
    parse_timestamp,
)

PAGING = frozenset({"limit", "marker", "page_reverse"})
SORTING = frozenset({"sort_key", "sort_dir"})
TAG_FILTERS = ("tags", "tags-any", "not-tags", "not-tags-any")
RESERVED = PAGING | SORTING | {"fields", *TAG_FILTERS}


class Kind(enum.Enum):
    """How a filter value of an attribute is read."""

    STR = "str"
    BOOL = "bool"
    INT = "int"
    LIST = "list"  # matches when the value is one of the list's items
    MAC = "mac"  # a MAC address: compared in lower case, as stored (EUI-48 hex is any case)
    TIME = "time"  # an ISO 8601 timestamp (400 otherwise), compared as the view shows it


@dataclass(frozen=True)
class Collection:
    """What the engine and the generic routes (tags) know of one collection: its plural
    and singular (`networks`, `network`), the tags' resource name, its filterable and
    sortable top-level attributes, and (for the tag routes) how to reach the row behind an
    id. Other collections (subnets, ports) add one of these (app.api.neutron.COLLECTIONS)."""

    collection: str
    member: str
    attributes: Mapping[str, Kind]
    id_param: str = ""  # the path parameter of one item: `<member>_id`
    # the extensions (aliases, app.api.neutron.envelopes.EXTENSIONS) this collection brings
    extensions: tuple[str, ...] = ()

    @property
    def param(self) -> str:
        return self.id_param or f"{self.member}_id"

    @property
    def sortable(self) -> frozenset[str]:
        return frozenset(k for k, kind in self.attributes.items() if kind is not Kind.LIST)


@dataclass
class ListQuery:
    filters: dict[str, list[Any]] = field(default_factory=dict)
    tag_filters: dict[str, set[str]] = field(default_factory=dict)
    fields: list[str] = field(default_factory=list)
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (key, ascending)
    limit: int | None = None
    marker: str | None = None
    page_reverse: bool = False


def to_boolean(value: str, name: str) -> bool:
    """neutron-lib converters.convert_to_boolean for a query value."""
    converted = convert_to_boolean(value)
    if converted is not None:
        return converted
    raise NeutronBadRequest(f"'{value}' cannot be converted to boolean (parameter {name})")


def _to_int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise NeutronBadRequest(f"'{value}' is not an integer (parameter {name})") from None


def parse(params: Iterable[tuple[str, str]], collection: Collection) -> ListQuery:
    """The list request's query string (every (name, value) pair, repeats included)."""
    query = ListQuery()
    grouped: dict[str, list[str]] = {}
    for name, value in params:
        grouped.setdefault(name, []).append(value)
    unknown = sorted(n for n in grouped if n not in RESERVED and n not in collection.attributes)
    if unknown:
        raise NeutronBadRequest(f"{unknown} is invalid attribute for filtering")
    for name, values in grouped.items():
        kind = collection.attributes.get(name)
        if kind is Kind.BOOL:
            query.filters[name] = [to_boolean(v, name) for v in values]
        elif kind is Kind.INT:
            query.filters[name] = [_to_int(v, name) for v in values]
        elif kind is Kind.MAC:
            query.filters[name] = [v.lower() for v in values]
        elif kind is Kind.TIME:
            query.filters[name] = [parse_timestamp(v) for v in values]
        elif kind is not None:
            query.filters[name] = list(values)
    for name in TAG_FILTERS:
        tags = {t for v in grouped.get(name, ()) for t in v.split(",") if t}
        if tags:
            query.tag_filters[name] = tags
    query.fields = [f for f in grouped.get("fields", ()) if f]
    query.sort = _sort(grouped.get("sort_key", []), grouped.get("sort_dir", []), collection)
    query.limit = _limit(grouped.get("limit"))
    markers = grouped.get("marker")
    query.marker = markers[-1] if markers else None
    reverse = grouped.get("page_reverse")
    query.page_reverse = to_boolean(reverse[-1], "page_reverse") if reverse else False
    return query


def _sort(keys: list[str], dirs: list[str], collection: Collection) -> list[tuple[str, bool]]:
    if dirs and len(dirs) != len(keys):
        raise NeutronBadRequest("The number of sort_keys and sort_dirs must be same")
    for key in keys:
        if key not in collection.sortable:
            raise NeutronBadRequest(f"{key} is an invalid attribute for sort_keys")
    for direction in dirs:
        if direction not in ("asc", "desc"):
            raise NeutronBadRequest(f"{direction} is an invalid value for sort_dirs")
    return [(k, (dirs[i] if dirs else "asc") == "asc") for i, k in enumerate(keys)]


def _limit(values: list[str] | None) -> int | None:
    """Neutron: a non-negative integer; 0 is no limit."""
    if not values:
        return None
    limit = _to_int(values[-1], "limit")
    if limit < 0:
        raise NeutronBadRequest(f"Limit must be an integer 0 or greater and not '{limit}'")
    return limit or None


# ---- applying a query ------------------------------------------------------------------------


def _matches(row: Mapping[str, Any], query: ListQuery) -> bool:
    for name, wanted in query.filters.items():
        value = row.get(name)
        if isinstance(value, list):
            if not any(w in value for w in wanted):
                return False
        elif value not in wanted and not (value is None and "" in wanted):
            return False
    tags = set(row.get("tags") or ())
    filters = query.tag_filters
    if "tags" in filters and not filters["tags"] <= tags:
        return False
    if "tags-any" in filters and not filters["tags-any"] & tags:
        return False
    if "not-tags" in filters and filters["not-tags"] <= tags:
        return False
    return not ("not-tags-any" in filters and filters["not-tags-any"] & tags)


def _sort_value(value: Any) -> tuple[bool, Any]:
    """None sorts first; otherwise values of one attribute compare among themselves."""
    return (value is not None, value if value is not None else 0)


def ordered(rows: list[dict[str, Any]], sort: Sequence[tuple[str, bool]]) -> list[dict[str, Any]]:
    if not sort:
        return list(rows)  # the collection's own order (creation order)
    keys = list(sort)
    if "id" not in [k for k, _ in keys]:
        keys.append(("id", keys[-1][1]))
    result = list(rows)
    for key, ascending in reversed(keys):  # stable sorts, the last key first
        result.sort(key=_key_of(key), reverse=not ascending)
    return result


def _key_of(key: str) -> Callable[[dict[str, Any]], tuple[bool, Any]]:
    return lambda row: _sort_value(row.get(key))


@dataclass
class Page:
    items: list[dict[str, Any]]
    links: list[dict[str, str]]


def apply(
    rows: list[dict[str, Any]],
    query: ListQuery,
    collection: Collection,
    href: Callable[[list[tuple[str, str]]], str],
    params: Sequence[tuple[str, str]],
) -> Page:
    """Filter, sort, page and select fields. `href(pairs)` makes a link's URL from query
    pairs; `params` are the request's own (kept in the links, marker and page_reverse
    replaced)."""
    found = ordered([r for r in rows if _matches(r, query)], query.sort)
    items, links = found, []
    if query.limit is not None:
        items = _page(found, query, collection)
        links = _links(items, query, href, params)
    if query.fields:
        items = [{k: r[k] for k in query.fields if k in r} for r in items]
    return Page(items, links)


def _page(rows: list[dict[str, Any]], query: ListQuery, collection: Collection) -> list[Any]:
    assert query.limit is not None
    index: int | None = None
    if query.marker is not None:
        index = next((i for i, r in enumerate(rows) if r["id"] == query.marker), None)
        if index is None:
            title = collection.member.capitalize()
            raise NeutronError(
                404, f"{title}NotFound", f"{title} {query.marker} could not be found."
            )
    if query.page_reverse:
        end = len(rows) if index is None else index
        return rows[max(0, end - query.limit) : end]
    start = 0 if index is None else index + 1
    return rows[start : start + query.limit]


def _links(
    items: list[dict[str, Any]],
    query: ListQuery,
    href: Callable[[list[tuple[str, str]]], str],
    params: Sequence[tuple[str, str]],
) -> list[dict[str, str]]:
    """neutron/api/api_common.py get_pagination_links."""
    assert query.limit is not None
    kept = [(k, v) for k, v in params if k not in ("marker", "page_reverse")]
    short = len(items) < query.limit
    links = []
    if items and not (short and not query.page_reverse):
        links.append({"rel": "next", "href": href([*kept, ("marker", items[-1]["id"])])})
    if items and not (short and query.page_reverse):
        pairs = [*kept, ("marker", items[0]["id"]), ("page_reverse", "True")]
        links.append({"rel": "previous", "href": href(pairs)})
    return links


def query_string(pairs: Sequence[tuple[str, str]]) -> str:
    return urlencode(list(pairs))
