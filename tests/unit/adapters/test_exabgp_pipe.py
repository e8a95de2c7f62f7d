"""The ExaBGP pipe over real OS pipes: every line delivered, an over-long one dropped and
reported, never mistaken for ExaBGP closing the pipe."""

from __future__ import annotations

import asyncio
import os

from netwatch.adapters.exabgp_pipe import ExabgpPipe


def run_pipe(chunks: list[bytes], limit: int) -> tuple[list[str], list[int]]:
    async def main():
        ours_in, theirs_out = os.pipe()  # ExaBGP writes theirs_out, we read ours_in
        theirs_in, ours_out = os.pipe()
        oversized: list[int] = []
        pipe = ExabgpPipe(ours_in, ours_out, on_oversized=oversized.append, limit=limit)
        await pipe.open()
        for chunk in chunks:
            os.write(theirs_out, chunk)
        os.close(theirs_out)
        lines = [line async for line in pipe.lines()]
        os.close(theirs_in)
        return lines, oversized

    return asyncio.run(main())


def test_every_line_arrives_and_eof_ends_it():
    lines, oversized = run_pipe([b"done\n", b'{"type": "state"}\n', b"error"], limit=1024)
    assert lines == ["done", '{"type": "state"}', "error"]
    assert oversized == []


def test_an_over_long_line_is_dropped_and_reported_and_the_next_ones_still_come():
    huge = b"x" * 5000 + b"\n"
    lines, oversized = run_pipe([b"done\n", huge, b"done\n", b"error\n"], limit=1000)
    assert lines == ["done", "done", "error"]
    assert oversized == [5001]
