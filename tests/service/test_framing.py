"""service.framing: where a request ends, whatever pieces its bytes arrive in."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.framing import Limits, RequestFraming, Verdict

LIMITS = Limits(max_head_bytes=4096, max_body_bytes=1000, max_chunk_line_bytes=64)

HEAD = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-Request-ID: abc-1\r\n"
REQUESTS = {
    "no-body": (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", Verdict.COMPLETE),
    "length": (HEAD + b"Content-Length: 5\r\n\r\nhello", Verdict.COMPLETE),
    "chunked": (
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\n\r\n",
        Verdict.COMPLETE,
    ),
    "trailers": (
        HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n1\r\na\r\n0\r\nT: v\r\n\r\n",
        Verdict.COMPLETE,
    ),
    "over-limit": (HEAD + b"Content-Length: 1001\r\n\r\n", Verdict.HEAD_ONLY),
    "two-lengths": (HEAD + b"Content-Length: 1\r\nContent-Length: 1\r\n\r\n", Verdict.HEAD_ONLY),
    "length-and-chunked": (
        HEAD + b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        Verdict.HEAD_ONLY,
    ),
    "bad-size": (HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", Verdict.REJECT),
    "no-crlf": (HEAD + b"Transfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", Verdict.REJECT),
    "chunked-over-limit": (
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n3e9\r\n",  # 1001 bytes announced
        Verdict.REJECT,
    ),
}


def scan_in_pieces(data: bytes, cuts: list[int]) -> tuple[Verdict, RequestFraming, bytearray]:
    """Feeds `data` cut at `cuts`, scanning after each piece, as the event loop does."""
    framing, received = RequestFraming(LIMITS), bytearray()
    verdict = Verdict.NEED_HEAD
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        received += data[start:end]
        verdict = framing.scan(received)
    return verdict, framing, received


@pytest.mark.parametrize("name", sorted(REQUESTS))
@settings(max_examples=30, derandomize=True, deadline=None)
@given(data=st.data())
def test_the_verdict_does_not_depend_on_how_bytes_arrive(name: str, data: st.DataObject) -> None:
    request, expected = REQUESTS[name]
    whole, framing, _ = scan_in_pieces(request + b"GET /next", [])
    cuts = sorted(data.draw(st.sets(st.integers(1, len(request) - 1), max_size=8)))
    pieces, pieced, _ = scan_in_pieces(request + b"GET /next", cuts)
    assert whole is pieces is expected
    assert pieced.end == framing.end
    if expected is Verdict.COMPLETE:
        assert framing.end == len(request)  # the pipelined "GET /next" is not part of it
        assert framing.request_id == "abc-1" or name == "no-body"


def test_a_head_that_never_ends_is_refused_at_the_limit() -> None:
    verdict, framing, _ = scan_in_pieces(b"GET / HTTP/1.1\r\nX: " + b"a" * 5000, [100, 4000])
    assert verdict is Verdict.REJECT and framing.problem is not None
    assert framing.problem.status == 431


def test_until_the_end_it_asks_for_more() -> None:
    request, _ = REQUESTS["chunked"]
    framing, received = RequestFraming(LIMITS), bytearray()
    verdicts = []
    for byte in request:
        received.append(byte)
        verdicts.append(framing.scan(received))
    head_end = request.index(b"\r\n\r\n") + 4
    assert set(verdicts[: head_end - 1]) == {Verdict.NEED_HEAD}
    assert set(verdicts[head_end - 1 : -1]) == {Verdict.NEED_BODY}
    assert verdicts[-1] is Verdict.COMPLETE


def test_leading_empty_lines_are_dropped_and_100_continue_is_noticed() -> None:
    data = bytearray(b"\r\n\r\nPOST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n")
    data += b"\r\n"
    framing = RequestFraming(LIMITS)
    assert framing.scan(data) is Verdict.NEED_BODY
    assert data.startswith(b"POST") and framing.expects_continue
    assert framing.without_expect(data + b"ab") == (
        b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nab"
    )
