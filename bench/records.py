"""What one benchmark run measured: bench.run fills these in, bench.report writes them out."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench import load, modellimit
from bench.fixtures import Scenario


@dataclass(frozen=True)
class Row:
    """One wrk run against one server configuration."""

    scenario: str
    batching: bool
    concurrency: int
    result: load.LoadResult
    mean_batch: float | None


@dataclass(frozen=True)
class Memory:
    """RSS of each worker (kB) after warm-up and after `requests` more requests."""

    scenario: str
    requests: int
    after_warmup_kb: dict[int, int]
    after_requests_kb: dict[int, int]


@dataclass
class Results:
    """Everything one run measured, plus the context to read it."""

    started: str
    load_before: str
    load_after: str = ""
    context: dict[str, str] = field(default_factory=dict)
    scenarios: list[Scenario] = field(default_factory=list)
    model_limits: dict[str, modellimit.ModelLimit] = field(default_factory=dict)
    decode_ms: dict[str, float] = field(default_factory=dict)
    echo: dict[tuple[str, int], load.LoadResult] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    peer: dict[tuple[str, int], load.LoadResult] = field(default_factory=dict)
    memory: list[Memory] = field(default_factory=list)
    # Scenario label -> the batching the product server chose at load, in its own words.
    batching: dict[str, str] = field(default_factory=dict)
