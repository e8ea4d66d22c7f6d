"""Service settings, and loading them from a TOML config file with secrets from the environment.

Secrets are never written in the config file: it names environment variables
(``api_key_env``, ``gas_key_env``) or an encrypted keystore, and they are read once here.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from payrouter.http_client import client_timeout
from payrouter.store.redis import cluster_seeds, is_cluster_url
from pricing import PriceTable, PricingError, load_price_table
from wallets import WalletError, load_keystore

__all__ = ["ConfigError", "DashboardSettings", "ProviderSettings", "ServerSettings", "Settings", "load_settings"]


class ConfigError(ValueError):
    """The config file or the environment it refers to is invalid.

    Attributes:
        problems: every problem found, one sentence each (the message alone when built without).
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems) or [message]


class ProviderSettings(BaseModel):
    """One upstream (the price table's ``provider`` names it).

    Attributes:
        base_url: the API base (``https://api.openai.com/v1``, ``https://api.anthropic.com``).
        kind: ``openai`` for any OpenAI-compatible API, ``anthropic`` for the Messages API.
        timeout: seconds for the whole call; connect_timeout and first_byte_timeout bound
            connecting and waiting for the first byte (and for each later streamed byte).
    """

    model_config = ConfigDict(extra="forbid")

    base_url: str
    kind: Literal["openai", "anthropic"] = "openai"
    api_key: SecretStr | None = None
    timeout: float = Field(default=120.0, gt=0)
    connect_timeout: float = Field(default=5.0, gt=0)
    first_byte_timeout: float = Field(default=30.0, gt=0)

    def timeouts(self) -> aiohttp.ClientTimeout:
        """connect and first-byte (and gaps between streamed bytes) limits of the provider client
        (the whole call's, ``timeout``, is the adapter's ``total``)."""
        return client_timeout(self.connect_timeout, self.first_byte_timeout)


class ServerSettings(BaseModel):
    """Where ``payrouter serve`` listens, and how long and how many clients it waits for.

    Attributes:
        header_timeout: seconds a connection may take to send a complete request head, counted
            from when it opens (an idle new connection is closed too) or, on a keep-alive
            connection, from the first byte of the request.
        body_timeout: seconds to receive a request's whole body once its head is in (then 408).
        keep_alive_timeout: seconds an idle keep-alive connection stays open between requests
            (behind a load balancer, make it longer than the balancer's own idle timeout).
        max_concurrency: connections served at once, idle keep-alive ones included; a request
            on a connection beyond it gets 503 and the connection is closed (per worker).
        workers: server processes sharing the port (``payrouter serve --workers`` overrides);
            more than one needs ``redis_url``. About one per core.
        unpaid_rate: unpaid requests (402 quotes, refused payments) one client address may
            sustain per second, per worker; each accepted payment gives its quote's back, so
            paying clients are not limited. 0: no limit.
        unpaid_burst: how many unpaid requests a client may make at once.
    """

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8402, ge=0, le=65535)
    header_timeout: float = Field(default=10.0, gt=0)
    body_timeout: float = Field(default=30.0, gt=0)
    keep_alive_timeout: int = Field(default=5, ge=1)
    max_concurrency: int = Field(default=512, ge=1)
    workers: int = Field(default=1, ge=1)
    unpaid_rate: float = Field(default=10.0, ge=0)
    unpaid_burst: int = Field(default=100, ge=1)


class DashboardSettings(BaseModel):
    """The operator dashboard (``GET /dashboard``; see `payrouter.routes.dashboard`).

    Attributes:
        token: the operator's bearer token (from ``[dashboard] token_env``); None: no dashboard
            (its routes do not exist).
        max_records: most journal records one refresh reads for the history charts.
        refresh_seconds: how often an open page fetches new data.
    """

    model_config = ConfigDict(extra="forbid")

    # a guessable token would open revenue, payers and payments to anyone who can reach the port
    MIN_TOKEN_LENGTH: ClassVar[int] = 24

    token: SecretStr | None = None
    max_records: int = Field(default=20_000, ge=100, le=500_000)
    refresh_seconds: float = Field(default=5.0, ge=1, le=300)

    @field_validator("token")
    @classmethod
    def _long_token(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and len(token.get_secret_value()) < cls.MIN_TOKEN_LENGTH:
            raise ValueError(
                f"the dashboard token must be at least {cls.MIN_TOKEN_LENGTH} characters (e.g. openssl rand -hex 32)"
            )
        return token


class Settings(BaseModel):
    """Everything `payrouter.app.create_app` needs.

    Attributes:
        price_table: the loaded price table.
        providers: upstream per provider name.
        redis_url: shared state; None runs on an in-process store (one process, development).
            ``redis+cluster://host:port,host:port`` (or ``rediss+cluster://``) names Redis
            Cluster seed nodes.
        redis_cluster: ``redis_url`` is a Redis Cluster node (any one; the rest are learned
            from it). Set by a ``redis+cluster://`` URL too; `redis_url` is then always that form.
        namespace: Redis key prefix.
        facilitator: ``local`` (verify and settle ourselves over ``rpc_url`` with ``gas_key``)
            or ``remote`` (an x402 facilitator at ``facilitator_url``).
        public_url: the externally visible base URL, for the x402 ``resource``.
        max_body_bytes: largest accepted request body.
        cors_origins: origins allowed to call from browsers.
        receipt_timeout: seconds to wait for a settlement to be mined.
        gas_keys: more gas wallets besides ``gas_key`` (local facilitator): each settlement is
            sent from a free one, each with its own nonce sequence, so settlements are not
            serialised on one wallet's nonce lock.
        reconcile_interval: seconds between the background reconciler's passes (0: off; run
            ``payrouter ledger reconcile`` instead).
        channel_authorizer_key: the receiver authorizer of ``batch-settlement`` channels (signs
            claims and refunds; its address is offered). Needed when the table offers channels,
            unless ``channel_facilitator_authorizer``.
        channel_facilitator_authorizer: offer the remote facilitator's receiver authorizer (its
            ``/supported`` names it) and let it sign claims and refunds. Opt-in: such a
            facilitator signs a refund for whoever can call its ``/settle``, so a payer who can
            reach it may take back what was charged and not yet claimed.
        claim_interval: seconds between claims of whatever channels owe (0: only on threshold
            and withdrawals).
        claim_threshold: USD unclaimed across channels that triggers a claim at once.
        claim_poll: seconds between the claimer's passes (each reads every channel and its
            withdrawals; keep it well under the withdraw delay). 0: no background claimer.
        dashboard: the operator dashboard (off without a token).
        request_log: file the request log is appended to, one JSON line per paid or refused
            request (``"-"``: standard output; None: off). `payrouter logs` reads it.
        price_table_path: the file ``price_table`` was loaded from (set by `load_settings`).
        reload: seconds between checks of the price table and its router file for changes
            (a changed file is reloaded without a restart; SIGHUP reloads at once). 0: SIGHUP only.
        feedback_ttl: seconds a served call can be rated by its payer (``POST /v1/feedback``);
            each answered call keeps ~0.5 KB in the store that long. 0: no feedback.
    """

    model_config = ConfigDict(extra="forbid")

    price_table: PriceTable
    providers: dict[str, ProviderSettings]
    redis_url: str | None = None
    redis_cluster: bool = False
    namespace: str = "payrouter"
    facilitator: Literal["local", "remote"] = "local"
    rpc_url: str | None = None
    gas_key: SecretStr | None = None
    gas_keys: list[SecretStr] = Field(default_factory=list)
    facilitator_url: str | None = None
    facilitator_headers: dict[str, dict[str, SecretStr]] = Field(default_factory=dict)
    public_url: str | None = None
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    cors_origins: list[str] = Field(default_factory=lambda: ["*"])
    receipt_timeout: float = Field(default=30.0, gt=0)
    reconcile_interval: float = Field(default=15.0, ge=0)
    server: ServerSettings = Field(default_factory=ServerSettings)
    channel_authorizer_key: SecretStr | None = None
    channel_facilitator_authorizer: bool = False
    claim_interval: float = Field(default=3600.0, ge=0)
    claim_threshold: Decimal = Field(default=Decimal("5"), ge=0)
    claim_poll: float = Field(default=30.0, ge=0)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    request_log: str | None = None
    price_table_path: Path | None = None
    reload: float = Field(default=1.0, ge=0)
    feedback_ttl: int = Field(default=86_400, ge=0)

    @model_validator(mode="after")
    def _redis_cluster_url(self) -> Settings:
        # one spelling downstream: every Redis client is built from a redis+cluster:// URL
        if self.redis_url is not None and is_cluster_url(self.redis_url):
            self.redis_cluster = True
        elif self.redis_cluster:
            if self.redis_url is None:
                raise ValueError("redis_cluster = true needs redis_url (a node of the cluster)")
            scheme, sep, rest = self.redis_url.partition("://")
            if not sep or scheme.lower() not in ("redis", "rediss"):
                raise ValueError("redis_url must be redis://, rediss:// or redis+cluster:// with redis_cluster")
            self.redis_url = f"{scheme.lower()}+cluster://{rest}"
        if self.redis_cluster:
            assert self.redis_url is not None
            cluster_seeds(self.redis_url)  # raises ValueError naming what is wrong
        return self

    @model_validator(mode="after")
    def _facilitator_needs(self) -> Settings:
        if "batch-settlement" in self.price_table.schemes:
            if self.channel_authorizer_key is None and not self.channel_facilitator_authorizer:
                raise ValueError(
                    "the price table offers batch-settlement: [channels] needs authorizer_key_env or "
                    "authorizer_keystore (the key that signs claims and refunds), or, with a remote "
                    "facilitator that holds one, facilitator_authorizer = true"
                )
            if self.channel_facilitator_authorizer and self.facilitator != "remote":
                raise ValueError(
                    '[channels] facilitator_authorizer = true needs a remote facilitator (mode = "remote")'
                )
            if self.channel_facilitator_authorizer and self.channel_authorizer_key is not None:
                raise ValueError("[channels] names an authorizer key and facilitator_authorizer = true: choose one")
            if self.claim_poll >= self.price_table.channels.withdraw_delay / 2:
                raise ValueError(
                    f"claim_poll ({self.claim_poll} s) must be well under the channels' withdraw_delay "
                    f"({self.price_table.channels.withdraw_delay} s): withdrawals are noticed by the claimer"
                )
        if self.facilitator == "local" and (not self.rpc_url or self.gas_key is None):
            raise ValueError("the local facilitator needs rpc_url and a gas key")
        if self.facilitator == "remote" and not self.facilitator_url:
            raise ValueError("the remote facilitator needs facilitator_url")
        if self.facilitator == "remote" and not self.rpc_url:
            # a settlement whose reply was lost can only be found, and its answer given, on chain
            raise ValueError(
                "the remote facilitator needs rpc_url too (read-only: the reconciler checks payments on chain)"
            )
        missing = sorted({m.provider for m in self.price_table.models} - self.providers.keys())
        if missing:
            raise ValueError(f"the price table uses providers with no [providers.<name>] section: {missing}")
        return self


def _env(environ: Mapping[str, str], name: object, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{what} must name an environment variable")
    value = environ.get(name)
    if not value:
        raise ConfigError(f"environment variable {name} ({what}) is unset or empty")
    return value


def load_settings(path: str | Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Load a TOML service config (see ``examples/payrouter.toml``).

    Raises:
        ConfigError: unreadable file, bad TOML, missing secrets, or invalid values.
    """
    env = os.environ if environ is None else environ
    path = Path(path)
    try:
        doc: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    base = path.parent
    # every problem is collected, so one run names all of them (four unset variables are four
    # lines of one error, not four runs)
    problems: list[str] = []

    def secret(name: object, what: str) -> str:
        try:
            return _env(env, name, what)
        except ConfigError as exc:
            problems.append(str(exc))
            return ""  # a placeholder, so the rest of the config is still checked

    def keystore_key(keystore: Path, password: str, what: str) -> str:
        if not password:
            return ""
        try:
            return load_keystore(keystore, password).unsafe_export_private_key()
        except (WalletError, OSError) as exc:
            problems.append(f"{what} {keystore}: {exc}")
            return ""

    table_path = doc.pop("price_table", None)
    table: PriceTable | None = None
    if not isinstance(table_path, str):
        problems.append("price_table must name the price table file")
    else:
        try:
            table = load_price_table(base / table_path)
        except PricingError as exc:
            problems.append(str(exc))
    data: dict[str, Any] = {"price_table": table}
    if isinstance(table_path, str):
        data["price_table_path"] = (base / table_path).resolve()

    providers = {}
    for name, section in (doc.pop("providers", None) or {}).items():
        section = dict(section)
        if "api_key_env" in section:
            section["api_key"] = secret(section.pop("api_key_env"), f"providers.{name}.api_key_env")
        elif "api_key_file" in section:
            secret_file = base / str(section.pop("api_key_file"))
            try:
                section["api_key"] = secret_file.read_text().strip()
            except OSError as exc:
                problems.append(f"providers.{name}.api_key_file: cannot read {secret_file}: {exc.strerror}")
        providers[name] = section
    data["providers"] = providers

    fac = dict(doc.pop("facilitator", None) or {})
    data["facilitator"] = fac.pop("mode", "local")
    if "rpc_url" in fac:
        data["rpc_url"] = fac.pop("rpc_url")
    if "gas_key_env" in fac:
        data["gas_key"] = secret(fac.pop("gas_key_env"), "facilitator.gas_key_env")
    if "gas_keystore" in fac:
        password = secret(fac.pop("gas_keystore_password_env", None), "facilitator.gas_keystore_password_env")
        data["gas_key"] = keystore_key(base / fac.pop("gas_keystore"), password, "facilitator.gas_keystore")
    more_gas: list[str] = []
    for name in ("gas_keys_env", "gas_keystores"):
        if not isinstance(fac.get(name, []), list):
            problems.append(f"facilitator.{name} must be a list")
            fac.pop(name)
    for i, var in enumerate(fac.pop("gas_keys_env", [])):
        more_gas.append(secret(var, f"facilitator.gas_keys_env[{i}]"))
    if "gas_keystores" in fac:
        password = secret(fac.pop("gas_keystores_password_env", None), "facilitator.gas_keystores_password_env")
        for i, keystore in enumerate(fac.pop("gas_keystores")):
            more_gas.append(keystore_key(base / str(keystore), password, f"facilitator.gas_keystores[{i}]"))
    if more_gas:
        data["gas_keys"] = more_gas
    if "url" in fac:
        data["facilitator_url"] = fac.pop("url")
    if "headers_env" in fac:
        headers = {h: secret(var, f"facilitator.headers_env.{h}") for h, var in fac.pop("headers_env").items()}
        data["facilitator_headers"] = {"*": headers}
    if "receipt_timeout" in fac:
        data["receipt_timeout"] = fac.pop("receipt_timeout")
    if fac:
        problems.append(f"unknown keys in [facilitator]: {sorted(fac)}")
    channels = dict(doc.pop("channels", None) or {})
    if table is None or "batch-settlement" not in table.schemes:
        # the key is read only where it is used: a table offering no channels needs no secret
        for name in ("authorizer_key_env", "authorizer_keystore", "authorizer_keystore_password_env"):
            channels.pop(name, None)
    if "authorizer_key_env" in channels:
        data["channel_authorizer_key"] = secret(channels.pop("authorizer_key_env"), "channels.authorizer_key_env")
    if "authorizer_keystore" in channels:
        password = secret(
            channels.pop("authorizer_keystore_password_env", None), "channels.authorizer_keystore_password_env"
        )
        keystore = base / channels.pop("authorizer_keystore")
        data["channel_authorizer_key"] = keystore_key(keystore, password, "channels.authorizer_keystore")
    for name in ("claim_interval", "claim_threshold", "claim_poll"):
        if name in channels:
            data[name] = channels.pop(name)
    if "facilitator_authorizer" in channels:
        data["channel_facilitator_authorizer"] = channels.pop("facilitator_authorizer")
    if channels:
        problems.append(f"unknown keys in [channels]: {sorted(channels)}")
    dashboard = dict(doc.pop("dashboard", None) or {})
    if "token_env" in dashboard:
        token = secret(dashboard.pop("token_env"), "dashboard.token_env")
        if token:
            dashboard["token"] = token
    data["dashboard"] = dashboard
    if isinstance(doc.get("request_log"), str) and doc["request_log"] not in ("", "-"):
        doc["request_log"] = str(base / doc["request_log"])  # relative to the config file, like the price table
    data.update(doc)
    settings: Settings | None = None
    if table is not None:
        try:
            settings = Settings.model_validate(data)
        except ValidationError as exc:
            problems += [
                f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors(include_url=False)
            ]
    if problems or settings is None:
        sep = "\n  " if len(problems) > 1 or "\n" in problems[0] else " "
        raise ConfigError(f"invalid config {path}:{sep}" + "\n  ".join(problems), problems)
    return settings
