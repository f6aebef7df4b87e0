"""The Neutron API's own documents (issue 12): the version document (`GET /networking/`),
the v2.0 resource list, and the extensions: exactly those whose behaviour exists here.

Aliases and names are Neutron's (neutron-lib api/definitions). Each collection adds its own
(Collection.extensions); the framework's are BASE_EXTENSIONS.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

UPDATED = "2026-12-01T00:00:00-00:00"

# alias -> (name, description)
EXTENSIONS: dict[str, tuple[str, str]] = {
    "standard-attr-tag": (
        "Tag support for resources with standard attribute: subnet, trunk, network_segment_"
        "range, router, network, policy, subnetpool, port, security_group, floatingip",
        "Tags on resources (GET/PUT/DELETE .../tags[/{tag}]) and the tags, tags-any, "
        "not-tags, not-tags-any filters",
    ),
    "standard-attr-revisions": (
        "Resource revision numbers",
        "revision_number: the row's generation, bumped on every change (tags too)",
    ),
    "revision-if-match": (
        "If-Match constraints based on revision_number",
        "If-Match: revision_number=N on PUT and DELETE: 412 when the resource is at another",
    ),
    "standard-attr-timestamp": (
        "Resource timestamps",
        "created_at and updated_at (ISO 8601, UTC)",
    ),
    "standard-attr-description": ("standard-attr-description", "description attributes"),
    "project-id": ("project_id field enabled", "project_id next to tenant_id"),
    "pagination": ("Pagination support", "limit, marker, page_reverse and *_links"),
    "sorting": ("Sorting support", "sort_key and sort_dir, repeatable"),
    "filter-validation": (
        "Filter parameters validation",
        "a filter naming no attribute is 400",
    ),
    "fields": ("Fields selection", "fields=, repeatable: only those attributes"),
    "provider": (
        "Provider Network",
        "provider:network_type (local, flat, vlan), provider:physical_network, "
        "provider:segmentation_id: admin only",
    ),
    "network-mtu": ("Network MTU", "mtu: the bridge's MTU (1500 by default)"),
    "net-mtu-writable": (
        "Network MTU (writable)",
        "mtu of a local or flat network changes its bridge's (a vlan network's is its trunk's)",
    ),
    "binding": ("Port Binding", "binding:host_id, binding:vif_type, binding:vnic_type"),
    "port-security": (
        "Port Security",
        "port_security_enabled: anti-spoofing of the port's tap (fixed at creation)",
    ),
    "allowed-address-pairs": (
        "Allowed Address Pairs",
        "allowed_address_pairs: further addresses a port may send from (its own MAC only)",
    ),
    "quotas": (
        "Quota management support",
        "/v2.0/quotas[/{project_id}]: network, subnet and port (-1: unlimited)",
    ),
    "quota_details": (
        "Quota details management support",
        "/v2.0/quotas/{project_id}/details: used, limit and reserved",
    ),
    "quota-check-limit": (
        "Quota engine limit check",
        "check_limit true in a quota update refuses a limit below the usage",
    ),
}
BASE_EXTENSIONS = (
    "standard-attr-tag",
    "standard-attr-revisions",
    "revision-if-match",
    "standard-attr-timestamp",
    "standard-attr-description",
    "project-id",
    "pagination",
    "sorting",
    "filter-validation",
    "fields",
)


def extension(alias: str) -> dict[str, Any]:
    name, description = EXTENSIONS[alias]
    return {
        "alias": alias,
        "name": name,
        "description": description,
        "updated": UPDATED,
        "links": [],
    }


def extensions(aliases: Iterable[str]) -> list[dict[str, Any]]:
    return [extension(a) for a in sorted(set(aliases))]


def version_document(base: str) -> dict[str, Any]:
    """`GET /networking/`: Neutron's versions document (`base`: .../networking)."""
    return {
        "versions": [
            {"id": "v2.0", "status": "CURRENT", "links": [{"href": f"{base}/v2.0/", "rel": "self"}]}
        ]
    }


def resources(base: str, collections: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """`GET /networking/v2.0/`: the collections, as (collection, member) pairs."""
    return {
        "resources": [
            {
                "name": member,
                "collection": collection,
                "links": [{"href": f"{base}/v2.0/{collection}", "rel": "self"}],
            }
            for collection, member in collections
        ]
    }
