"""The fronts: the public faces every caller meets.

- ``batcher``: :class:`batched.Batcher`, owned by an ``async with`` block.
- ``decorator``: :func:`batched.dynamically` on ``async def`` (and methods), caller-driven
  outside ``async with``.
- ``sync``: :func:`batched.dynamically` on a plain ``def``, called from threads.
- ``seed``: mixedbread ``batched``'s processors, on the same path.
- ``submit``: the one submit path they all take, with the cache/dedupe layer.
"""
