"""visit-counter: counts page visits in the module's key-value store and reports the most
visited pages. A Runcell module in Python, built with componentize-py (`runcell build`).

Counts live under `visits/{site}/{page}` as decimal text, so the `site` setting keeps the
counts of two jobs configured for two sites apart.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import config, kv, log
from wit_world.imports.runcell_module_types import (
    Capabilities,
    JobError_InvalidInput,
    JobError_Permanent,
    JobError_Transient,
    JobSpec,
    Manifest,
    RouteAccess,
    RunContext,
    SettingSpec,
)

NAME = "visit-counter"
VERSION = "0.1.0"
DEFAULT_SITE = "default"
DEFAULT_TOP = 3
# The most keys `top-pages` reads, bounding its work on a huge store.
MAX_LISTED = 10_000
# Longest page path accepted, in characters, well under the store's key limit.
MAX_PAGE_CHARS = 512


def pages_of(input: dict) -> list[str]:
    """The `pages` of a `record-visits` input, or ValueError saying which is wrong."""
    pages = input.get("pages", [])
    if not isinstance(pages, list):
        raise ValueError("pages must be a list of page paths")
    for index, page in enumerate(pages):
        if not isinstance(page, str) or not page.startswith("/"):
            raise ValueError(f"pages[{index}] must be a path starting with /")
        if len(page) > MAX_PAGE_CHARS:
            raise ValueError(f"pages[{index}] is longer than {MAX_PAGE_CHARS} characters")
    return pages


def top_of(setting: str | None) -> int:
    """The `top` setting as a count of pages, or ValueError."""
    if setting is None:
        return DEFAULT_TOP
    if not setting.isdigit() or int(setting) == 0:
        raise ValueError(f"the top setting must be a positive whole number, not {setting!r}")
    return int(setting)


def ranked(counts: dict[str, int], top: int) -> list[dict]:
    """The `top` most visited pages, most visited first, ties by path."""
    order = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [{"page": page, "visits": visits} for page, visits in order[:top]]


def field(key: str, value) -> log.Field:
    return log.Field(key=key, value=json.dumps(value))


def storage(err: Err) -> Err:
    """A failed key-value call as the run's error: worth retrying, storage may come back."""
    return Err(JobError_Transient(f"key-value store: {err.value}"))


def site() -> str:
    return config.get("site") or DEFAULT_SITE


def record_visits(context: RunContext, input: dict) -> dict:
    """Adds one visit per entry of `pages` to each page's count."""
    try:
        pages = pages_of(input)
    except ValueError as err:
        raise Err(JobError_InvalidInput(str(err)))
    prefix = f"visits/{site()}"
    totals: dict[str, int] = {}
    try:
        for page in pages:
            key = prefix + page
            if page not in totals:
                stored = kv.get(key)
                totals[page] = int(stored) if stored else 0
            totals[page] += 1
        for page, total in totals.items():
            kv.set(prefix + page, str(total).encode())
    except Err as err:
        raise storage(err)
    log.write(
        log.Level.INFO,
        "recorded visits",
        [field("site", site()), field("visits", len(pages)), field("attempt", context.attempt)],
    )
    return {"site": site(), "recorded": len(pages), "totals": totals}


def top_pages(context: RunContext, input: dict) -> dict:
    """The most visited pages of the site, `top` of them (setting, default 3)."""
    try:
        top = top_of(config.get("top"))
    except ValueError as err:
        # The job's settings are wrong: a retry reads the same ones.
        raise Err(JobError_Permanent(str(err)))
    prefix = f"visits/{site()}"
    try:
        keys = kv.list_keys(prefix + "/", MAX_LISTED)
        counts = {}
        for key in keys:
            stored = kv.get(key)
            # A key removed between listing and reading is simply not counted.
            if stored:
                counts[key[len(prefix) :]] = int(stored)
    except Err as err:
        raise storage(err)
    if len(keys) >= MAX_LISTED:
        log.write(log.Level.WARN, "page limit reached; the ranking covers the first pages only", [field("limit", MAX_LISTED)])
    pages = ranked(counts, top)
    log.write(log.Level.INFO, "ranked pages", [field("site", site()), field("pages", len(counts))])
    return {"site": site(), "pages": pages}


JOBS = {"record-visits": record_visits, "top-pages": top_pages}


class WitWorld(wit_world.WitWorld):
    def describe(self) -> Manifest:
        return Manifest(
            name=NAME,
            version=VERSION,
            description="Counts page visits per site in the key-value store and reports the most visited pages.",
            jobs=[
                JobSpec(
                    name="record-visits",
                    description='Adds a visit for each page of {"pages": ["/", ...]} to the site\'s counts.',
                    default_schedule=None,
                    input_schema='{"type":"object","properties":{"pages":{"type":"array","items":{"type":"string","pattern":"^/"}}}}',
                    timeout_ms=5_000,
                    fuel=None,
                ),
                JobSpec(
                    name="top-pages",
                    description="Reports the site's most visited pages.",
                    default_schedule="0 7 * * *",
                    input_schema=None,
                    timeout_ms=10_000,
                    fuel=None,
                ),
            ],
            capabilities=Capabilities(
                outbound_hosts=[], publishes=[], key_value=True, routes=RouteAccess.NONE
            ),
        )

    def settings(self) -> list[SettingSpec]:
        return [
            SettingSpec(
                name="site",
                description=f"Which site's counts the job reads and writes (default: {DEFAULT_SITE}).",
                required=False,
                secret=False,
                jobs=[],
            ),
            SettingSpec(
                name="top",
                description=f"How many pages top-pages reports (default: {DEFAULT_TOP}).",
                required=False,
                secret=False,
                jobs=["top-pages"],
            ),
        ]

    def run(self, job: str, context: RunContext, input: str) -> str:
        handler = JOBS.get(job)
        if handler is None:
            raise Err(JobError_Permanent(f"no job named {job}"))
        try:
            parsed = json.loads(input) if input else None
        except ValueError as err:
            raise Err(JobError_InvalidInput(f"input is not JSON: {err}"))
        if parsed is None:
            parsed = {}
        if not isinstance(parsed, dict):
            raise Err(JobError_InvalidInput("input must be a JSON object"))
        return json.dumps(handler(context, parsed))
