"""The synchronous managers (``coordinator.sync``) as synchronous code uses them.

The user's function passed to ``execute`` runs in the calling thread; exceptions come back
unchanged; many threads share one manager; events reach callbacks and blocking subscriptions;
a forked child connects again (or is told why it cannot); the sync SDK clients take a sync
manager. Tests taking ``sync_store`` run on memory, Redis and Cluster.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import pickle
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from coordinator import (
    AuthProfile,
    AuthProfileManager,
    ConfigError,
    Event,
    ModelAuth,
    ModelCall,
    ModelProfile,
    NoProfileAvailableError,
    OAuthProvider,
    ProfileNotFoundError,
    SyncAuthProfileManager,
    SyncModelProfileManager,
    SyncOAuthManager,
    SyncStore,
    connect_sync,
)
from coordinator.sdk import BackgroundLoop, openai_http_client_sync
from coordinator.testing import RedisServer, advance_time

from .conftest import unique_namespace
from .model_helpers import profile
from .oauth_fixtures import OidcServer, discover, oidc_server  # noqa: F401  (a fixture)
from .sdk_fakes import KEY_A, KEY_B, PLACEHOLDER, FakeApi, openai_rate_limit

MESSAGES: list[Any] = [{"role": "user", "content": "hello"}]
CURRENT_USER: contextvars.ContextVar[str] = contextvars.ContextVar("current_user")


@pytest.fixture
def sync_store(backend_url: str, secret_key: str) -> Iterator[SyncStore]:
    """A sync store on the test's backend, in a namespace of its own."""
    store = connect_sync(backend_url, namespace=unique_namespace(), secret_key=secret_key)
    try:
        yield store
    finally:
        store.close()


def two_keys(store: SyncStore, provider: str = "openai") -> SyncAuthProfileManager:
    pool = SyncAuthProfileManager(store)
    pool.add_profile(AuthProfile(id="key-a", provider=provider, api_key=KEY_A))
    pool.add_profile(AuthProfile(id="key-b", provider=provider, api_key=KEY_B))
    return pool


def two_profiles(store: SyncStore) -> SyncModelProfileManager:
    models = SyncModelProfileManager(store)
    models.add_profile(profile("primary", 100))
    models.add_profile(profile("secondary", 90))
    return models


# -- execute: the call in the caller's thread, the failover in the async manager ---------------


def test_execute_runs_the_call_in_the_calling_thread_and_fails_over(
    sync_store: SyncStore,
) -> None:
    models = two_profiles(sync_store)
    request = threading.local()
    request.id = "req-1"  # a thread-local: only this thread has it
    CURRENT_USER.set("ada")  # a context variable (Flask keeps its request context in one)
    seen: list[tuple[int, str | None, str, str | None]] = []

    def call(c: ModelCall) -> str:
        user = CURRENT_USER.get(None)
        seen.append((threading.get_ident(), getattr(request, "id", None), c.profile.id, user))
        if c.profile.id == "primary":
            raise httpx.ConnectError("refused")
        return f"answer from {c.profile.id}"

    assert models.execute(call) == "answer from secondary"
    me = threading.get_ident()
    assert seen == [(me, "req-1", "primary", "ada"), (me, "req-1", "secondary", "ada")]
    status = {s.id: s for s in models.get_status()}
    assert status["primary"].consecutive_failures == 1
    assert status["primary"].last_error_kind == "timeout"
    assert status["secondary"].failures_total == 0


def test_exceptions_come_back_unchanged(sync_store: SyncStore) -> None:
    models = two_profiles(sync_store)
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    error = httpx.HTTPStatusError(
        "400", request=request, response=httpx.Response(400, request=request)
    )

    def malformed(c: ModelCall) -> None:
        raise error

    with pytest.raises(httpx.HTTPStatusError) as raised:
        models.execute(malformed)
    assert raised.value is error  # the caller's error, at once, without failover
    assert all(s.failures_total == 0 for s in models.get_status())
    with pytest.raises(ProfileNotFoundError):
        models.get_profile("nope")
    pool = SyncAuthProfileManager(sync_store)
    with pytest.raises(NoProfileAvailableError):
        pool.acquire("openai")


def test_functions_passed_must_be_plain_functions() -> None:
    with connect_sync("memory://") as store:
        models = two_profiles(store)

        async def coroutine_function(c: ModelCall) -> None:
            return None

        with pytest.raises(ConfigError) as refused:
            models.execute(coroutine_function)  # type: ignore[arg-type]
        assert refused.value.field == "call"

        def returns_an_awaitable(c: ModelCall) -> Any:
            return coroutine_function(c)

        with pytest.raises(ConfigError, match="returned an awaitable"):
            models.execute(returns_an_awaitable)
        assert models.execute(lambda c: c.profile.id) == "primary"  # (still usable)


# -- threads -------------------------------------------------------------------------------------


def test_many_threads_share_one_manager(sync_store: SyncStore) -> None:
    pool = two_keys(sync_store)
    pool.add_profile(AuthProfile(id="key-c", provider="openai", api_key=KEY_A + "c"))
    pool.add_profile(AuthProfile(id="key-d", provider="openai", api_key=KEY_B + "d"))
    models = two_profiles(sync_store)

    def work(_: int) -> tuple[list[str], list[bool]]:
        picks = [pool.acquire("openai").id for _ in range(25)]
        me = threading.get_ident()
        in_my_thread = [models.execute(lambda c: threading.get_ident() == me) for _ in range(5)]
        return picks, in_my_thread

    with ThreadPoolExecutor(8) as threads:
        results = list(threads.map(work, range(8)))
    picks = Counter(p for picks, _ in results for p in picks)
    # Global round-robin decided in Redis: 200 concurrent picks, exactly 50 of each key.
    assert picks == {"key-a": 50, "key-b": 50, "key-c": 50, "key-d": 50}
    assert all(flag for _, flags in results for flag in flags)


# -- events ----------------------------------------------------------------------------------------


def test_callbacks_and_subscriptions_see_events(sync_store: SyncStore) -> None:
    pool = two_keys(sync_store)
    heard: list[tuple[str, int]] = []
    delivered = threading.Event()

    def callback(event: Event) -> None:
        heard.append((event.profile_id, threading.get_ident()))
        delivered.set()

    unsubscribe = pool.on("profile:cooldown", callback)
    with pool.subscribe("profile:cooldown") as sub:
        assert sub.get(timeout_s=0.05) is None  # nothing yet
        pool.mark_failed("key-a", "HTTP 429", kind="rate_limit")
        event = sub.get(timeout_s=10)
        assert event is not None and (event.type, event.profile_id) == ("profile:cooldown", "key-a")
        assert delivered.wait(10)
        assert heard[0][0] == "key-a"
        assert heard[0][1] != threading.get_ident()  # callbacks run on a worker thread
        unsubscribe()
        pool.mark_failed("key-b", "HTTP 429", kind="rate_limit")
        event = next(sub)
        assert event.profile_id == "key-b"
    # Callbacks are called before subscriptions get an event: none was called for key-b.
    assert [pid for pid, _ in heard] == ["key-a"]


def test_closing_a_subscription_ends_a_loop_over_it_in_another_thread() -> None:
    with connect_sync("memory://") as store:
        pool = two_keys(store)
        sub = pool.subscribe()
        seen: list[Event] = []
        reader = threading.Thread(target=lambda: seen.extend(sub))
        reader.start()
        sub.close()
        reader.join(10)
        assert not reader.is_alive() and seen == []
        assert sub.get(timeout_s=0) is None
        sub.close()  # (twice is allowed)


# -- the store -----------------------------------------------------------------------------------


def test_closing_the_store_closes_its_managers_and_refuses_later_calls() -> None:
    store = connect_sync("memory://")
    pool = two_keys(store)
    pool.on("*", lambda event: None)
    reader = pool.manager.events
    store.close()
    store.close()  # (twice is allowed)
    assert reader._closed
    with pytest.raises(ConfigError) as refused:
        pool.acquire("openai")
    assert refused.value.field == "store"


def test_a_sync_call_from_the_stores_own_loop_is_refused() -> None:
    with connect_sync("memory://") as store:
        pool = two_keys(store)

        async def inside() -> Any:
            return pool.get_profile("key-a")  # would wait for itself

        with pytest.raises(ConfigError, match="its own event loop"):
            store.run(inside())
        assert store.run(pool.manager.get_profile("key-a")).id == "key-a"  # the async way


def test_the_store_clock_is_the_async_stores() -> None:
    with connect_sync("memory://") as store:
        pool = two_keys(store)
        pool.mark_failed("key-a", "HTTP 429", kind="rate_limit")
        pool.mark_failed("key-b", "HTTP 429", kind="rate_limit")
        with pytest.raises(NoProfileAvailableError):
            pool.acquire("openai")
        advance_time(store.store, 61_000)
        assert pool.acquire("openai").id in {"key-a", "key-b"}


# -- fork ----------------------------------------------------------------------------------------


def in_child(body: Callable[[], Any]) -> Any:
    """Run ``body`` in a forked child; its result (or its error, as text) comes back."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            try:
                answer: Any = ("ok", body())
            except BaseException as exc:
                answer = ("error", f"{type(exc).__name__}: {exc}")
            os.write(write, pickle.dumps(answer))
        finally:
            os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    return pickle.loads(b"".join(chunks))


def test_a_forked_child_connects_again_and_leaves_the_parent_alone(
    redis_server: RedisServer, secret_key: str
) -> None:
    store = connect_sync(redis_server.url, namespace=unique_namespace(), secret_key=secret_key)
    try:
        pool = two_keys(store)
        oauth = SyncOAuthManager(store)
        corp = OAuthProvider(name="corp", client_id="app", token_endpoint="https://x.test/token")
        oauth.add_provider(corp)
        heard: list[str] = []
        delivered = threading.Event()
        pool.on("profile:cooldown", lambda e: (heard.append(e.profile_id), delivered.set()))
        sub = pool.subscribe()
        parent_loop = store.loop

        def child() -> Any:
            assert store.loop is not parent_loop
            picks = [pool.acquire("openai").id for _ in range(2)]
            with pytest.raises(ConfigError) as refused:
                sub.get(timeout_s=0)
            pool.mark_failed("key-a", "HTTP 429", kind="rate_limit")
            assert delivered.wait(10)  # the parent's on() callback, carried over
            providers = list(oauth.providers)  # and the provider added after it was made
            assert oauth.manager.store is store.store
            store.close()
            return picks, refused.value.field, heard, providers

        assert in_child(child) == (
            "ok",
            (["key-a", "key-b"], "subscription", ["key-a"], ["corp"]),
        )
        # The parent's loop and connections still serve it, and it sees what the child did.
        assert store.loop is parent_loop
        assert pool.acquire("openai").id == "key-b"  # key-a cools down since the child's 429
        assert sub.get(timeout_s=10) is not None
        sub.close()
    finally:
        store.close()


def test_a_forked_child_cannot_use_the_parents_memory_store_nor_its_loop() -> None:
    with connect_sync("memory://") as store, BackgroundLoop() as loop:
        pool = two_keys(store)

        def child() -> Any:
            with pytest.raises(ConfigError) as memory:
                pool.acquire("openai")

            async def nothing() -> None:
                return None

            with pytest.raises(ConfigError) as old_loop:
                loop.run(nothing())
            return memory.value.field, old_loop.value.field

        assert in_child(child) == ("ok", ("url", "loop"))
        assert pool.acquire("openai").id == "key-a"


# -- the sync SDK clients ------------------------------------------------------------------------


def test_the_sync_sdk_clients_take_a_sync_manager() -> None:
    api = FakeApi("sync").start()
    try:
        with connect_sync("memory://") as store:
            pool = two_keys(store)
            client = openai.OpenAI(api_key=PLACEHOLDER, base_url=api.base_url, max_retries=0,
                                   http_client=openai_http_client_sync(pool))  # fmt: skip
            api.for_key(KEY_A, openai_rate_limit())
            reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            assert reply.choices[0].message.content == "hi from sync"
            assert api.keys == [KEY_A, KEY_B]
            status = {s.id: s for s in pool.get_status("openai")}
            assert status["key-a"].last_error_kind == "rate_limit"
            with pytest.raises(ConfigError) as both:
                openai_http_client_sync(pool, run=store.run)
            assert both.value.field == "run"
            with pytest.raises(ConfigError) as neither:
                openai_http_client_sync(AuthProfileManager(store.store))
            assert neither.value.field == "run"
    finally:
        api.stop()


def test_model_profiles_through_the_sync_sdk_client() -> None:
    alpha, beta = FakeApi("alpha").start(), FakeApi("beta").start()
    try:
        with connect_sync("memory://") as store:
            models = SyncModelProfileManager(store)
            for name, key, fake, priority in (("alpha", KEY_A, alpha, 10),
                                              ("beta", KEY_B, beta, 5)):  # fmt: skip
                models.add_profile(ModelProfile(id=name, provider=name, priority=priority,
                                                auth=ModelAuth.api_key(key),
                                                base_url=fake.base_url))  # fmt: skip
            models.open_breaker("alpha")
            client = openai.OpenAI(api_key=PLACEHOLDER, max_retries=0,
                                   http_client=openai_http_client_sync(models))  # fmt: skip
            reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            assert reply.choices[0].message.content == "hi from beta"
            assert (alpha.keys, beta.keys) == ([], [KEY_B])
    finally:
        alpha.stop()
        beta.stop()


# -- OAuth: the loopback login, blocking --------------------------------------------------------


def test_a_sync_login_runs_on_url_in_the_calling_thread(
    oidc_server: OidcServer,  # noqa: F811
    secret_key: str,
) -> None:
    provider = asyncio.run(discover(oidc_server))
    with connect_sync("memory://", namespace=unique_namespace(), secret_key=secret_key) as store:
        oauth = SyncOAuthManager(store, [provider])
        threads: list[int] = []

        def browser(url: str) -> None:
            # The login waits on the loop while this runs here: the "user" signs in, and the
            # provider redirects to the login's loopback server.
            threads.append(threading.get_ident())
            with httpx.Client(follow_redirects=True, timeout=20) as user:
                assert "Signed in" in user.get(url).text

        cred = oauth.login("testop", on_url=browser, timeout_s=30)
        assert threads == [threading.get_ident()]
        assert cred.id == "testop:test-user-1" and cred.has_refresh_token
        token = oauth.get_access_token(cred.id)
        refreshed = oauth.refresh_token(cred.id)
        assert refreshed.version == cred.version + 1
        assert oauth.get_access_token(cred.id).reveal() != token.reveal()
        assert [c.id for c in oauth.list_credentials("testop")] == [cred.id]


def test_managers_are_wired_to_their_sync_twins_on_one_store() -> None:
    with connect_sync("memory://") as store, connect_sync("memory://") as other:
        pool, oauth = SyncAuthProfileManager(store), SyncOAuthManager(store)
        models = SyncModelProfileManager(store, auth_manager=pool, token_source=oauth)
        assert models.manager.auth_manager is pool.manager
        assert models.manager.token_source is oauth.manager
        with pytest.raises(ConfigError) as elsewhere:
            SyncModelProfileManager(other, auth_manager=pool)
        assert elsewhere.value.field == "auth_manager"
        with pytest.raises(ConfigError) as async_one:
            SyncModelProfileManager(other, auth_manager=pool.manager)  # type: ignore[arg-type]
        assert async_one.value.field == "auth_manager"
        with pytest.raises(ConfigError) as not_a_store:
            SyncAuthProfileManager(store.store)  # type: ignore[arg-type]
        assert not_a_store.value.field == "store"
