"""The demonstration's fleet: app replicas, refresh workers, fake providers and virtual time.

Each replica has its own managers (pools, model profiles, OAuth) and its own HTTP client; on
``memory://`` they share the one embedded store of this process, against Redis each opens its
own connection. The refresh workers are the real :class:`workers.Worker`, each with its own
store connection on Redis. Time is virtual (:class:`VirtualClock`): every store's clock is held
still and moved forward ``TICK_S`` at a time.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from coordinator import (
    AllProfilesUnavailableError,
    AuthConfig,
    AuthProfile,
    AuthProfileManager,
    Event,
    ModelAuth,
    ModelCall,
    ModelConfig,
    ModelProfile,
    ModelProfileManager,
    OAuthConfig,
    OAuthManager,
    OAuthProvider,
    Secret,
    Store,
    connect,
    generate_key,
)
from coordinator.testing import advance_time, hold_time
from scripts.demo_fakes import FakeAccounts, FakeAPI
from scripts.demo_scenario import (
    CHAT_PER_TICK,
    GEMINI_PER_TICK,
    KEYS,
    PROFILES,
    REPLICAS,
    USERS,
    WORKERS,
    Profile,
)
from workers import Worker, WorkerSettings

POLL_S = 0.02  # how often event readers poll the embedded backend
WORKER_SETTINGS = WorkerSettings(
    refresh_interval_s=0.02,  # real seconds: both jobs run after every step of virtual time
    jitter_s=0.005,
    sweep_interval_s=0.02,
    heartbeat_interval_s=1,
    heartbeat_ttl_s=5,
    shutdown_grace_s=2,
    retry_base_s=0.05,
    retry_max_s=0.5,
)
MESSAGES = [{"role": "user", "content": "Say hello."}]


class VirtualClock:
    """Virtual time: every store's clock is held still at the time of the current step
    (:func:`coordinator.testing.hold_time`) and moved forward from step to step
    (:func:`coordinator.testing.advance_time`), so that the scripts of every replica and worker
    see the same time, and a deadline falls exactly where it is due."""

    def __init__(self) -> None:
        self.stores: list[Store] = []
        self.start_ms = 0
        self.t_s = 0.0

    async def attach(self, store: Store) -> None:
        """Hold ``store``'s clock at the current virtual time (the first store's time now,
        for the first one) and move it with the others from now on."""
        if any(s is store for s in self.stores):
            return
        if not self.stores:
            self.start_ms = await hold_time(store)
        else:
            await hold_time(store, self.start_ms + round(self.t_s * 1000))
        self.stores.append(store)

    def advance_to(self, t_s: float) -> None:
        """Move every store's clock forward to virtual second ``t_s``."""
        step_ms = round((t_s - self.t_s) * 1000)
        if step_ms <= 0:
            return
        for store in self.stores:
            advance_time(store, step_ms)
        self.t_s = t_s

    def now_s(self) -> float:
        """Virtual seconds since the start."""
        return self.t_s

    def at(self, ts_ms: int) -> float:
        """A store timestamp (ms) as virtual seconds since the start."""
        return (ts_ms - self.start_ms) / 1000


@dataclass
class Tally:
    """What one replica's requests came to."""

    requests: int = 0
    ok: int = 0
    failed: int = 0
    hops: int = 0  # failover hops inside execute()
    served: Counter[str] = field(default_factory=Counter)  # model profile -> successes
    errors: Counter[str] = field(default_factory=Counter)  # exception -> count
    waited: int = 0  # access tokens it had to wait for (a refresh in its way)
    tokens: int = 0  # access tokens it was handed (OAuthManager.get_token)


class WatchedTokens:
    """The replica's token source: the OAuth manager, counting calls that had to wait."""

    def __init__(self, oauth: OAuthManager, tally: Tally) -> None:
        self.oauth = oauth
        self.tally = tally

    async def get_access_token(self, credential_id: str) -> Secret:
        """A valid access token (``OAuthManager.get_token``), noting whether it waited."""
        token = await self.oauth.get_token(credential_id)
        self.tally.tokens += 1
        self.tally.waited += int(token.waited)
        return token.token


@dataclass
class Replica:
    """One app replica: its store connection, managers and HTTP client."""

    index: int
    store: Store
    pools: AuthProfileManager
    models: ModelProfileManager
    oauth: OAuthManager
    http: httpx.AsyncClient
    tally: Tally
    seen: set[str] = field(default_factory=set)  # stream ids of the events it received

    def managers(self) -> tuple[AuthProfileManager, ModelProfileManager, OAuthManager]:
        """The three managers, each reading the events of its own domain."""
        return self.pools, self.models, self.oauth


async def _send(http: httpx.AsyncClient, call: ModelCall) -> httpx.Response:
    """Call the selected provider the way its API wants (the response is classified by
    ``execute``: a 429 or 503 returned here fails over like a raised error)."""
    secret = call.secret.reveal() if call.secret is not None else ""
    provider = call.profile.provider
    if provider == "anthropic":
        headers = {"x-api-key": secret, "anthropic-version": "2023-06-01"}
        payload = {"model": call.model, "max_tokens": 64, "messages": MESSAGES}
        return await http.post(f"{call.base_url}/messages", headers=headers, json=payload)
    headers = {"authorization": f"Bearer {secret}"}
    if provider == "google":
        body = {"contents": [{"parts": [{"text": "Say hello."}]}]}
        url = f"{call.base_url}/models/{call.model}:generateContent"
        return await http.post(url, headers=headers, json=body)
    payload = {"model": call.model, "messages": MESSAGES}
    return await http.post(f"{call.base_url}/chat/completions", headers=headers, json=payload)


async def request(replica: Replica, model: str | None) -> None:
    """One request through ``ModelProfileManager.execute``: the best profile that serves
    ``model`` (any, when None), failing over until one answers."""
    tried: list[str] = []

    async def call(c: ModelCall) -> httpx.Response:
        tried.append(c.profile.id)
        return await _send(replica.http, c)

    tally = replica.tally
    tally.requests += 1
    try:
        await replica.models.execute(call, model=model)
    except AllProfilesUnavailableError as exc:
        tally.failed += 1
        tally.errors[type(exc).__name__] += 1
        return
    tally.ok += 1
    tally.hops += len(tried) - 1
    tally.served[tried[-1]] += 1


class Fakes:
    """The local providers: one fake API per provider, and Google's accounts server."""

    def __init__(self, clock: VirtualClock) -> None:
        self.accounts = FakeAccounts(clock.now_s)
        self.secrets = {k.id: f"sk-demo-{k.id}-{secrets.token_hex(12)}" for k in KEYS}
        self.secrets["grok"] = f"xai-demo-{secrets.token_hex(16)}"
        owner = {k.id: k.provider for k in KEYS} | {p.id: p.provider for p in PROFILES}
        self.apis: dict[str, FakeAPI] = {}
        for provider in sorted({p.provider for p in PROFILES}):
            known = {v: k for k, v in self.secrets.items() if owner[k] == provider}
            accounts = self.accounts if provider == "google" else None
            self.apis[provider] = FakeAPI(provider, clock.now_s, known, accounts)

    async def start(self) -> None:
        """Start every server."""
        await self.accounts.server.start()
        for api in self.apis.values():
            await api.server.start()

    async def stop(self) -> None:
        """Stop every server."""
        await self.accounts.server.stop()
        for api in self.apis.values():
            await api.server.stop()

    def google(self) -> OAuthProvider:
        """The OAuth provider as the replicas and workers configure it."""
        base = self.accounts.server.url
        return OAuthProvider(
            name="google",
            client_id="demo-app.apps.example.com",
            client_secret=Secret("demo-client-secret"),
            authorization_endpoint=f"{base}/authorize",
            token_endpoint=f"{base}/token",
            userinfo_endpoint=f"{base}/userinfo",
            scopes=("openid", "email"),
            redirect_uri="http://127.0.0.1:8000/oauth/callback",
        )

    def base_url(self, profile: Profile) -> str:
        """Where the fake of a profile's provider listens (with the API's path prefix)."""
        prefix = "/v1beta" if profile.provider == "google" else "/v1"
        return self.apis[profile.provider].server.url + prefix


def _model_profile(profile: Profile, fakes: Fakes) -> ModelProfile:
    auth = (
        ModelAuth.pool(profile.provider)
        if profile.pool
        else ModelAuth.api_key(Secret(fakes.secrets[profile.id]))
    )
    return ModelProfile(
        id=profile.id,
        provider=profile.provider,
        auth=auth,
        base_url=fakes.base_url(profile),
        priority=profile.priority,
        models=list(profile.models),
        default_model=profile.default_model,
    )


class Fleet:
    """Replicas, workers and fakes of one run."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.namespace = namespace
        self.secret_key = os.environ.get("COORDINATOR_SECRET_KEY") or generate_key()
        self.clock = VirtualClock()
        self.fakes = Fakes(self.clock)
        self.replicas: list[Replica] = []
        self.workers: list[Worker] = []
        self._worker_tasks: list[asyncio.Task[None]] = []
        self._stores: list[Store] = []
        self.synced_s = 0.0  # virtual time of the last wait for the workers

    @property
    def shown_url(self) -> str:
        """The store URL with any password masked."""
        return self._stores[0].url if self._stores else self.url

    async def _store(self) -> Store:
        """A store connection: on ``memory://`` the process's one embedded store."""
        if self._stores and self.url.startswith("memory://"):
            return self._stores[0]
        store = await connect(self.url, namespace=self.namespace, secret_key=self.secret_key)
        self._stores.append(store)
        return store

    async def open(self) -> None:
        """Start the fakes and open the replicas."""
        await self.fakes.start()
        for i in range(REPLICAS):
            self.replicas.append(await self._replica(i))
        for replica in self.replicas:
            await self.clock.attach(replica.store)

    async def _replica(self, index: int) -> Replica:
        store = await self._store()
        tally = Tally()
        pools = AuthProfileManager(store, AuthConfig(event_poll_interval_s=POLL_S))
        http = httpx.AsyncClient(timeout=10)
        oauth = OAuthManager(
            store,
            [self.fakes.google()],
            config=OAuthConfig(event_poll_interval_s=POLL_S),
            http=http,
        )
        models = ModelProfileManager(
            store,
            ModelConfig(event_poll_interval_s=POLL_S),
            auth_manager=pools,
            token_source=WatchedTokens(oauth, tally),
        )
        return Replica(index, store, pools, models, oauth, http, tally)

    async def provision(self) -> list[tuple[str, int, int]]:
        """Replica 0 stores the pools' keys and the model profiles; the people sign in to
        Google (each login started on one replica, its callback taken by another). Returns
        (credential id, replica that started, replica that finished) per login."""
        first = self.replicas[0]
        for key in KEYS:
            secret = Secret(self.fakes.secrets[key.id])
            await first.pools.add_profile(
                AuthProfile(id=key.id, provider=key.provider, api_key=secret)
            )
        for profile in PROFILES:
            await first.models.add_profile(_model_profile(profile, self.fakes))
        logins = []
        for n, user in enumerate(USERS):
            start, finish = self.replicas[n % REPLICAS], self.replicas[(n + 2) % REPLICAS]
            credential_id = await self._sign_in(user, start, finish)
            await first.pools.add_profile(
                AuthProfile(
                    id=f"google-{user}",
                    provider="google",
                    type="oauth",
                    oauth_credential_id=credential_id,
                )
            )
            logins.append((credential_id, start.index, finish.index))
        return logins

    async def _sign_in(self, user: str, start: Replica, finish: Replica) -> str:
        """A web login: the URL from one replica, the provider's redirect (the fake accounts
        server consents at once) handled by another."""
        hint = {"login_hint": f"{user}@example.com"}
        auth = await start.oauth.get_authorization_url("google", extra_params=hint)
        redirect = await start.http.get(auth.url)
        credential = await finish.oauth.handle_callback(redirect.headers["location"])
        return credential.id

    async def start_workers(self) -> None:
        """Start the refresh workers (the real ``workers.Worker``, APScheduler and all)."""
        for _ in range(WORKERS):
            store = await self._store()
            await self.clock.attach(store)
            worker = Worker(store, [self.fakes.google()], WORKER_SETTINGS)
            self.workers.append(worker)
            self._worker_tasks.append(asyncio.create_task(worker.run()))

    async def workers_caught_up(self, timeout_s: float = 20.0) -> None:
        """Wait until every worker has run each of its jobs from start to end since now (two
        more runs of each): tokens that came due at this virtual time are refreshed, and
        cooldowns and open periods that ended are over, even where no traffic goes."""
        self.synced_s = self.clock.now_s()
        jobs = ("refresh", "sweep")
        marks = [{job: w.runs[job] + 2 for job in jobs} for w in self.workers]
        deadline = time.monotonic() + timeout_s
        while any(w.runs[j] < m[j] for w, m in zip(self.workers, marks, strict=True) for j in jobs):
            if time.monotonic() > deadline:
                raise RuntimeError("a refresh worker stopped running its jobs")
            await asyncio.sleep(0.005)

    async def traffic(self) -> None:
        """One round: every replica sends its chat and gemini requests at once."""
        calls = []
        for replica in self.replicas:
            calls += [request(replica, None) for _ in range(CHAT_PER_TICK)]
            calls += [request(replica, "gemini-1.5-flash") for _ in range(GEMINI_PER_TICK)]
        await asyncio.gather(*calls)

    def listen(
        self, observe: Callable[[Event], None], picks: list[tuple[str, int, str | None]]
    ) -> None:
        """Every replica notes the events it receives (the transitions of any replica or
        worker); replica 0 also hands them to ``observe``. Every pick of a pool key, on any
        replica, goes to ``picks`` (key, store time, model)."""
        for replica in self.replicas:

            def seen(event: Event, replica: Replica = replica) -> None:
                if event.stream_id is not None:
                    replica.seen.add(f"{event.source}/{event.stream_id}/{event.type}")
                    if replica.index == 0:
                        observe(event)

            def picked(event: Event) -> None:
                model = event.data.get("model")
                picks.append((event.profile_id, event.ts_ms, str(model) if model else None))

            for manager in replica.managers():
                manager.on("*", seen)
            replica.pools.on("profile:selected", picked)

    async def readers_started(self) -> None:
        """Wait until every replica's event readers have their starting point."""
        for replica in self.replicas:
            for manager in replica.managers():
                await manager.events.wait_started()

    async def forget(self) -> int:
        """Delete the run's keys from a real Redis (its namespace only); returns how many."""
        if not self._stores or self._stores[0].backend == "memory":
            return 0
        store, removed = self._stores[0], 0
        async with store.guard("SCAN"):
            async for key in store.client.scan_iter(match=f"{self.namespace}:*", count=500):
                removed += int(await store.client.delete(key))
        return removed

    async def close(self, *, keep: bool = True) -> int:
        """Stop the workers, close the managers and clients; unless ``keep``, delete the
        run's keys from a real Redis; close the stores and fakes. Returns the keys deleted."""
        for worker in self.workers:
            worker.stop()
        await asyncio.gather(*self._worker_tasks, return_exceptions=True)
        for replica in self.replicas:
            for manager in replica.managers():
                await manager.close()
            await replica.http.aclose()
        removed = 0 if keep else await self.forget()
        for store in self._stores:
            await store.close()
        await self.fakes.stop()
        return removed
