"""schemathesis fuzzes the real server through its own /openapi.json.

Every operation of the document gets schema-valid (positive) and schema-violating (negative)
requests, generated from a fixed seed and bounded in number so CI stays short. Each answer must
be no 5xx, carry a status, content type, headers and body that the document declares, reject
negative data with a 4xx, and accept positive data (where a schema-valid byte string that is
no image may still get its documented 413/422).
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode

from bench.server import Server
from service.config import Settings
from service.openapi import build_openapi
from tests.service.conftest import API_KEY

SEED = 20240611
MAX_EXAMPLES = 40  # per operation, mode and server: at most 12 x 40 = 480 requests

CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            # Schema-valid bytes need not be a decodable image: their 413/422 are documented.
            "positive_data_acceptance": {"expected-statuses": ["2XX", "401", "413", "422", "503"]},
            # Too many images is refused (413) before each one is looked at.
            "negative_data_rejection": {"expected-statuses": ["400", "401", "413", "415", "422"]},
        },
        # Routes that name a model: a generated name is (almost always) no model here, a 404.
        # The protocols' infer routes answer 400 for a schema-valid body that holds no image.
        "operations": [
            {
                "include-path-regex": r"^/(v2/models|predictions)/",
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": ["2XX", "400", "401", "404", "413", "422", "503"]
                    },
                    "negative_data_rejection": {
                        "expected-statuses": ["400", "401", "404", "413", "415", "422"]
                    },
                },
            },
            {
                "include-path-regex": r"^/v1/models/",
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": ["2XX", "401", "404", "413", "422", "503"]
                    },
                    "negative_data_rejection": {
                        "expected-statuses": ["400", "401", "404", "413", "415", "422"]
                    },
                },
            },
            # /v1/explain's target is any string to the document (it is built before a model
            # is loaded); only the served model's labels and indices are accepted, others 400.
            {
                "include-path": "/v1/explain",
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": ["2XX", "400", "401", "413", "422", "503"]
                    }
                },
            },
        ],
    }
)
# (method, path, mode): negative data only where there is something to violate.
CASES = [
    (method.upper(), path, mode)
    for path, item in build_openapi(Settings())["paths"].items()
    for method, operation in item.items()
    for mode in GenerationMode
    if mode is GenerationMode.POSITIVE or "parameters" in operation or "requestBody" in operation
]
CASES_RUN: Counter[str] = Counter()


@pytest.fixture(params=["open", "keyed"])
def fuzzed(request: pytest.FixtureRequest) -> tuple[Server, dict[str, str]]:
    """The default server, and the strict one (API key, small limits) called with its key."""
    if request.param == "open":
        return request.getfixturevalue("server"), {}
    return request.getfixturevalue("strict_server"), {"Authorization": f"Bearer {API_KEY}"}


@pytest.mark.parametrize(
    ("method", "path", "mode"), CASES, ids=[f"{m} {p} {mode.value}" for m, p, mode in CASES]
)
def test_operation_conforms_to_the_document(
    fuzzed: tuple[Server, dict[str, str]], method: str, path: str, mode: GenerationMode
) -> None:
    running, headers = fuzzed
    schema = schemathesis.openapi.from_url(running.url + "/openapi.json", config=CONFIG)
    operation = schema[path][method]
    statuses: Counter[int] = Counter()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @seed(SEED)
    def check(case: schemathesis.Case) -> None:
        # The real key replaces the generated token, but a negative case that left the header
        # out on purpose goes without it: given the key, a case whose other violation does not
        # survive serialization (a query value of None) is a valid request, and a 200 for it
        # would read as "schema-violating request accepted".
        sent = headers if "Authorization" in (case.headers or {}) else {}
        response = case.call_and_validate(headers=sent)
        statuses[response.status_code] += 1

    check()
    CASES_RUN[f"{method} {path} {mode.value}"] += statuses.total()
    assert statuses, "no case was generated"
    assert not any(status >= 500 and status != 503 for status in statuses)
    print(f"{method} {path} {mode.value}: {statuses.total()} calls, statuses {dict(statuses)}")
