"""Generating, importing and type-checking the Python SDK that openapi-python-client makes
from openapi/openapi.json, the way an SDK user would: the generator's CLI, offline."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from tests.e2e.helpers import UnixTransport

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "openapi" / "openapi.json"
BIN = Path(sys.executable).parent
GENERATOR = BIN / "openapi-python-client"
MYPY = BIN / "mypy"
PACKAGE = "kvmnetd_client"

# post_hooks: [] -- by default the generator runs `ruff check --fix` and `ruff format` on its
# output and only warns ("ruff is not in PATH") when ruff cannot be found; the code is valid
# without them, so the result must not depend on what happens to be on PATH.
GENERATOR_CONFIG = {"post_hooks": [], "package_name_override": PACKAGE}


@dataclass(frozen=True)
class GeneratedSdk:
    """The package generated as `root`/PACKAGE, and what the generator printed."""

    root: Path
    output: str


def generate(workdir: Path, spec: Path = SPEC) -> GeneratedSdk:
    """Run the generator CLI on `spec` (a local file: no network) with warnings as errors."""
    config = workdir / "openapi-python-client.json"
    config.write_text(json.dumps(GENERATOR_CONFIG))
    root = workdir / "sdk"
    root.mkdir()
    argv = [
        str(GENERATOR),
        "generate",
        "--path",
        str(spec),
        "--output-path",
        str(root / PACKAGE),
        "--meta",
        "none",
        "--config",
        str(config),
        "--fail-on-warning",
    ]
    proc = subprocess.run(
        argv, cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
    )
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 or not (root / PACKAGE / "__init__.py").exists():
        raise AssertionError(f"{argv} exited with {proc.returncode}:\n{output}")
    return GeneratedSdk(root, output)


class Sdk:
    """The imported SDK: its operation modules by tag and operation id, its models, and a
    Client that talks to a daemon over its unix socket."""

    def __init__(self, package: ModuleType) -> None:
        self.package = package
        self.models = importlib.import_module(f"{package.__name__}.models")
        self.errors = importlib.import_module(f"{package.__name__}.errors")
        self.types = importlib.import_module(f"{package.__name__}.types")

    def op(self, tag: str, operation_id: str) -> ModuleType:
        return importlib.import_module(f"{self.package.__name__}.api.{tag}.{operation_id}")

    def client(self, socket: Path, timeout: float = 30) -> Any:
        """The generated Client; raises UnexpectedStatus on codes the spec does not declare."""
        return self.package.Client(
            base_url="http://kvmnetd",
            timeout=httpx.Timeout(timeout),
            raise_on_unexpected_status=True,
            httpx_args={"transport": UnixTransport(str(socket))},
        )


def import_sdk(root: Path) -> Sdk:
    """Import the package generated under `root`. It stays importable by name afterwards:
    its submodules are found through the package's own (absolute) __path__."""
    sys.path.insert(0, str(root))
    try:
        return Sdk(importlib.import_module(PACKAGE))
    finally:
        sys.path.remove(str(root))


def forget_sdk() -> None:
    """Drop the generated package from sys.modules (end of the session)."""
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
        del sys.modules[name]


def mypy(root: Path, *targets: str) -> subprocess.CompletedProcess[str]:
    """mypy --strict on `targets` (paths relative to `root`), with its cache under `root` and
    an empty config (not the repo's, which is for app/)."""
    config = root / "mypy.ini"
    config.write_text("[mypy]\n")
    argv = [
        str(MYPY),
        "--strict",
        "--no-error-summary",
        "--show-error-codes",
        "--cache-dir",
        str(root / ".mypy_cache"),
        "--config-file",
        str(config),
        *targets,
    ]
    return subprocess.run(
        argv, cwd=root, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
    )
