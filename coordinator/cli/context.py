"""What every command shares: the store settings from the root options, and one way to run a
library call against the store (connect, call, close)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import click

from ..overview import Managers
from ..store.connection import connect

__all__ = ["Settings", "json_option", "pass_settings", "run"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Settings:
    """The root options: which store, which namespace."""

    url: str | None
    namespace: str


pass_settings = click.make_pass_decorator(Settings)

json_option = click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")


def run(settings: Settings, call: Callable[[Managers], Awaitable[T]]) -> T:
    """Connect, run ``call`` with the three managers, close everything."""

    async def body() -> T:
        store = await connect(settings.url, namespace=settings.namespace)
        managers = Managers.over(store)
        try:
            return await call(managers)
        finally:
            await managers.close()
            await store.close()

    return asyncio.run(body())
