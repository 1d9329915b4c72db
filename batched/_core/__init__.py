"""The sans-I/O core: the rules of batching, as plain synchronous code.

- ``calls``: a call's states, from submission to the outcome its caller sees, and the
  one place where outcomes are counted.
- ``queue``: admission (queue room), intake, pools, "is a batch due", the cut, and the
  hand-back of outcomes, for one open batcher.
- ``results``: what a batch function may return.
- ``counts``: the counters behind ``stats``.

Nothing here awaits or imports a backend; every front and driver uses the same core.
"""
