"""The daemon's one settings object: built once from a TOML file and KVMNETD_* variables.

Precedence: explicit arguments > environment > config file > defaults. It is passed down
explicitly; nothing imports a global instance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from app.domain.names import validate_link_name
from app.domain.neutron import NeutronConfig, TenantNetworkType

DEFAULT_CONFIG = Path("/etc/kvmnetd/config.toml")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KVMNETD_", extra="forbid")

    listen: str = Field(
        "127.0.0.1:8080", description="host:port of the TCP listener (bearer token); empty disables"
    )
    socket: Path | None = Field(None, description="unix socket path; default RUN_DIR/kvmnetd.sock")
    state_dir: Path = Path("/var/lib/kvmnetd")
    run_dir: Path = Path("/run/kvmnetd")
    database_url: str | None = Field(None, description="default sqlite:///STATE_DIR/kvmnetd.db")
    netns: str | None = Field(None, description="operate inside this named network namespace")
    reconcile_interval: float = Field(30.0, gt=0, le=3600)
    token_file: Path | None = Field(None, description="default STATE_DIR/admin-token")
    max_body_bytes: int = Field(1 << 20, gt=0)
    log_level: str = "INFO"
    qemu_binary: str = "qemu-system-x86_64"
    qemu_user: str = Field(
        "kvmnetd-qemu",
        min_length=1,
        max_length=32,
        pattern=r"^[a-z_][a-z0-9_-]*$",
        description="the unprivileged system user every qemu runs as unless a VM asks for "
        "run_as (created by make run and deploy/install.sh); a VM whose user is missing "
        "fails with a status_reason, never falls back to root",
    )
    tenant_images_dir: Path | None = Field(
        None,
        description="where a non-admin's boot files (boot.disk, kernel, initrd) must lie, "
        "after symlinks and `..` are resolved; default STATE_DIR/images. qemu (qemu_user) "
        "must be able to read them there",
    )
    probe_kernel: Path | None = Field(
        None,
        description="guest kernel booted once to learn whether KVM really runs guests; "
        "default STATE_DIR/kernel/vmlinuz when present",
    )
    physical_networks: dict[str, str] = Field(
        default_factory=dict,
        description="Neutron API: physical network name -> the kernel name of its bridge in "
        'the default project, e.g. {"physnet1": "br-phys"} (KVMNETD_PHYSICAL_NETWORKS as '
        "JSON). A bridge with that kernel name is a `flat` network on the physnet; `vlan` "
        "networks on it ride on that bridge (created when absent)",
    )
    tenant_network_type: TenantNetworkType = Field(
        TenantNetworkType.AUTO,
        description="Neutron API: what a network created without provider attributes is: "
        "vlan (from the project's vlan_ranges on tenant_physical_network's bridge), local (a "
        "bridge of its own, kernel name brq + 11 hex digits of its id) or auto (vlan where "
        "the host carries VLANs and a physical network is configured, else local)",
    )
    tenant_physical_network: str | None = Field(
        None, description="Neutron API: the physnet of tenant vlan networks; default: the first"
    )
    config_file: Path | None = Field(None, exclude=True)

    @field_validator("physical_networks")
    @classmethod
    def _bridge_names(cls, value: dict[str, str]) -> dict[str, str]:
        for physnet, bridge in value.items():
            if not physnet or len(physnet) > 64:
                raise ValueError(f"physical network name {physnet!r} must be 1-64 characters")
            validate_link_name(bridge)
        return value

    @model_validator(mode="after")
    def _tenant_physnet_configured(self) -> Settings:
        wanted = self.tenant_physical_network
        if wanted is not None and wanted not in self.physical_networks:
            raise ValueError(f"tenant_physical_network {wanted!r} is not in physical_networks")
        return self

    @property
    def neutron(self) -> NeutronConfig:
        """What the Neutron API needs of these settings."""
        return NeutronConfig(
            dict(self.physical_networks), self.tenant_network_type, self.tenant_physical_network
        )

    @field_validator("netns")
    @classmethod
    def _empty_netns_is_none(cls, value: str | None) -> str | None:
        return value or None

    @property
    def socket_path(self) -> Path:
        return self.socket or self.run_dir / "kvmnetd.sock"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'kvmnetd.db'}"

    @property
    def admin_token_file(self) -> Path:
        return self.token_file or self.state_dir / "admin-token"

    @property
    def images_dir(self) -> Path:
        """The tenants' images directory (tenant_images_dir, default STATE_DIR/images)."""
        return self.tenant_images_dir or self.state_dir / "images"

    @property
    def probe_kernel_path(self) -> Path | None:
        path = self.probe_kernel or self.state_dir / "kernel" / "vmlinuz"
        return path if path.is_file() else None

    @property
    def listen_address(self) -> tuple[str, int] | None:
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from overrides > environment > `config_file` (default: /etc/kvmnetd/config.toml
    when it exists) > defaults."""
    path = config_file or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")

    class _SettingsWithFile(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
            if path is not None:
                sources += (TomlConfigSettingsSource(settings_cls, toml_file=path),)
            return sources

    given = {k: v for k, v in overrides.items() if v is not None}
    return _SettingsWithFile(**given, config_file=path)
