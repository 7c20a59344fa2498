"""Reference point for the load generator's token-rate benchmark: the streaming client loop of
vLLM's serving benchmark (aiohttp, SSE split on blank lines, json.loads per chunk, a
perf_counter per chunk), on one core, against the same simulated server.

    evalctl-agent sim-server --port 8123 --prefill-us-per-token 0 --decode-ms-per-token 0 \
        --decode-ms-per-extra-request 0 &
    python agent/benches/python_client.py http://127.0.0.1:8123 64 128 1000

Prints token chunks per wall second and per CPU second of the client process.
"""

import asyncio
import json
import sys
import time

import aiohttp


async def one(session, url, max_tokens):
    payload = {
        "model": "evalctl-sim",
        "prompt": "bench prompt",
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = 0
    buffer = ""
    text = ""
    itl = []
    last = start = time.perf_counter()
    async with session.post(url + "/v1/completions", json=payload) as response:
        async for raw in response.content.iter_any():
            buffer += raw.decode("utf-8")
            while "\n\n" in buffer:
                message, buffer = buffer.split("\n\n", 1)
                for line in message.strip().splitlines():
                    if not line.startswith("data:"):
                        continue
                    data = line.removeprefix("data:").strip()
                    if data == "[DONE]":
                        continue
                    chunk = json.loads(data)
                    if choices := chunk.get("choices"):
                        now = time.perf_counter()
                        if chunks:
                            itl.append(now - last)
                        last = now
                        text += choices[0].get("text") or ""
                        chunks += 1
    _ = (start, itl, text)
    return chunks


async def main(url, concurrency, requests, max_tokens):
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        queue = list(range(requests))
        total = 0

        async def worker():
            nonlocal total
            while queue:
                queue.pop()
                chunks = await one(session, url, max_tokens)
                total += chunks

        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        f"python aiohttp: c={concurrency} {total} token chunks in {wall:.3f} s wall: "
        f"{total / wall:.0f} chunks/s; CPU {cpu:.3f} s = {cpu * 1e6 / total:.2f} us/chunk "
        f"({total / cpu:.0f} chunks per CPU-second)"
    )


if __name__ == "__main__":
    url = sys.argv[1]
    concurrency, requests, max_tokens = (int(a) for a in sys.argv[2:5])
    asyncio.run(main(url, concurrency, requests, max_tokens))
