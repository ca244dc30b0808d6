"""Property-based fuzz over OpenAI's OpenAPI spec (issue 14): a bounded number of requests,
valid and invalid, to every implemented path of an open server: never a 5xx, always an error
envelope on a 4xx, always a schema-valid answer on a 2xx."""

from __future__ import annotations

import os

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from e2e.common import LLAMA_MODEL
from support.fuzz import FuzzTally, case_strategy, check_answer, send
from support.server import ServerProcess

FUZZ_EXAMPLES = int(os.environ.get("KAKEHASHI_TEST_FUZZ_EXAMPLES", "500"))


@pytest.mark.slow
def test_spec_fuzz_never_gets_a_5xx(open_server: ServerProcess) -> None:
    tally = FuzzTally()
    strategy = case_strategy([LLAMA_MODEL, "text-embedding-ada-002"])
    with httpx.Client(base_url=f"{open_server.base_url}/", timeout=120) as http:

        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def one_request(case: object) -> None:
            response = send(http, case)  # type: ignore[arg-type]
            tally.record(response)
            check_answer(response)

        one_request()
    assert tally["5xx"] == 0
    assert tally.sent >= FUZZ_EXAMPLES
    assert tally["2xx"] > 0 and tally["4xx"] > 0, tally  # both the happy and the error paths
    open_server.assert_alive()
