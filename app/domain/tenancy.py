"""Projects and who is asking: the roles a token carries, the principal a request acts as,
and how token secrets are made and kept (only as a hash).

Shapes follow Neutron and Keystone where they have one: every resource has a `project_id`;
a token's role is `admin` (every project), `member` (create, change and delete within its
project) or `reader` (read within its project), as Keystone's default roles
(https://docs.openstack.org/keystone/latest/admin/service-api-protection.html).
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from dataclasses import dataclass

# The project every resource made before projects existed belongs to, and the one the
# unix socket and the first-start admin token act in. A fixed UUID, so that `find` by id
# or by name ("default") both work.
DEFAULT_PROJECT_ID = "00000000-0000-4000-8000-000000000000"
DEFAULT_PROJECT_NAME = "default"

SECRET_PREFIX = "kvmnetd_"  # marks a token secret in logs and secret scanners
SECRET_BYTES = 32


class Role(enum.StrEnum):
    ADMIN = "admin"
    MEMBER = "member"
    READER = "reader"


class Quota(enum.StrEnum):
    """What a project's quotas limit (Neutron /v2.0/quotas and Incus limits.* words);
    a quota absent from a project's `quotas` is unlimited."""

    VMS = "vms"
    VCPUS = "vcpus"  # summed over the project's VMs
    MEMORY_MIB = "memory_mib"  # MiB, summed over the project's VMs
    TAPS = "taps"
    BRIDGES = "bridges"
    VLANS = "vlans"
    SEGMENTS = "segments"  # bridges and VLANs together (Neutron's `network` quota)
    NETWORKS = "networks"
    PORT_FORWARDS = "port_forwards"
    PORTS = "ports"  # port resources (/v1/ports, Neutron ports)


class Via(enum.StrEnum):
    """How the request proved who it is."""

    UNIX_SOCKET = "unix-socket"  # the socket's file mode is its guard: admin
    ADMIN_TOKEN = "admin-token"  # the first-start token file: admin
    TOKEN = "token"  # a project token (api_tokens)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as. `token_id` is the api_tokens row (None for the unix socket
    and the first-start admin token)."""

    project_id: str
    role: Role
    via: Via
    token_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def may_write(self) -> bool:
        return self.role is not Role.READER


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks (`principal`) and under which request id: what a service scopes its reads
    by and records on the operations it makes (the audit trail)."""

    principal: Principal
    request_id: str | None = None

    @property
    def project_id(self) -> str:
        """The project the caller acts in: where its creates land, where names resolve."""
        return self.principal.project_id

    @property
    def is_admin(self) -> bool:
        return self.principal.is_admin

    @property
    def scope(self) -> Scope:
        """A member or reader sees its project only; an admin sees every project, and its
        names resolve in its own project (ids anywhere)."""
        project_id = self.principal.project_id
        return Scope(None if self.is_admin else project_id, project_id)


@dataclass(frozen=True, slots=True)
class Scope:
    """What a lookup may see: `project_id` is the one project whose resources are visible
    (None: every project, as an admin sees them); `home` is the project names resolve in
    (None: any project, for the daemon's own lookups). Another project's resource is then
    exactly as unknown as an id nobody has (Neutron: 404, never 403, so that its existence
    is not revealed)."""

    project_id: str | None
    home: str | None

    def sees(self, project_id: str) -> bool:
        return self.project_id is None or self.project_id == project_id

    @classmethod
    def of(cls, project_id: str) -> Scope:
        """Exactly one project: visible there, names resolved there."""
        return cls(project_id, project_id)


# the daemon's own lookups (the supervisor, services' internal reads by id)
EVERY_PROJECT = Scope(None, None)


ADMIN_BY_SOCKET = Principal(DEFAULT_PROJECT_ID, Role.ADMIN, Via.UNIX_SOCKET)
ADMIN_BY_TOKEN_FILE = Principal(DEFAULT_PROJECT_ID, Role.ADMIN, Via.ADMIN_TOKEN)
# what a service acts as when nobody asked through the API (tests, the daemon itself)
LOCAL_ADMIN = Caller(ADMIN_BY_SOCKET)


def new_secret() -> str:
    """A fresh token secret: the prefix and 256 random bits, URL-safe base64 (an RFC 6750
    b64token, so it travels as `Authorization: Bearer` and `X-Auth-Token` alike)."""
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def secret_hash(secret: bytes | str) -> str:
    """What the database keeps of a secret: its SHA-256, hex. A secret carries 256 random
    bits, so a fast unsalted hash is enough (no dictionary to guess from); the lookup by
    hash is then one indexed query."""
    raw = secret.encode("latin-1") if isinstance(secret, str) else secret
    return hashlib.sha256(raw).hexdigest()
