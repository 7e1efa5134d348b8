"""Who a bearer key belongs to: a tenant, or an administrator.

Keys live in environment variables that the configuration names: ``server.api_keys_env`` holds the keys of
the tenant ``default``, ``tenants.<name>.api_keys_env`` those of tenant ``<name>``, ``server.admin_keys_env``
the admin keys. A tenant's key routes, chats and grades, and its tenant is the request's tenant (a request
that names another tenant is refused); it grades only its own tenant's decisions and sees only its own
spend. An admin key sees every tenant's spend, ``/metrics`` and the OpenAPI spec, and neither routes nor
grades. A key has one role: the same key under two tenants, or as a tenant's and an admin key, is refused.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass

from serve.config import DEFAULT_TENANT, ConfigError, ServeConfig


@dataclass(frozen=True)
class Principal:
    """The holder of a key: a tenant (``tenant`` set) or an administrator (``tenant`` None)."""

    tenant: str | None

    @property
    def admin(self) -> bool:
        return self.tenant is None

    def describe(self) -> str:
        return "an admin key" if self.tenant is None else f"a key of tenant '{self.tenant}'"


class Keys:
    """The configured keys; looks a presented key up in constant time per key."""

    def __init__(self, config: ServeConfig) -> None:
        server = config.server
        sources = [(server.api_keys_env, Principal(DEFAULT_TENANT))]
        sources += [(tenant.api_keys_env, Principal(name)) for name, tenant in config.tenants.items()]
        sources.append((server.admin_keys_env, Principal(None)))
        found: dict[str, Principal] = {}
        for env, principal in sources:
            for key in (k.strip() for k in os.environ.get(env, "").split(",")):
                if not key:
                    continue
                if found.get(key, principal) != principal:
                    raise ConfigError(f"serve: a key in ${env} is also {found[key].describe()}; each key has one role")
                found[key] = principal
        if all(p.admin for p in found.values()):
            raise ConfigError(
                f"serve: set at least one tenant's bearer API key in ${server.api_keys_env} or a "
                "[tenants.<name>] api_keys_env variable (comma-separated)"
            )
        self._keys = [(key.encode(), principal) for key, principal in found.items()]
        self.tenants = sorted({p.tenant for p in found.values() if p.tenant is not None})

    def lookup(self, token: str) -> Principal | None:
        """The holder of ``token``, or None; compares against every key, so timing tells nothing."""
        presented = token.encode()
        holder = None
        for key, principal in self._keys:
            if hmac.compare_digest(presented, key):
                holder = principal
        return holder
