"""The drivers: what runs the core's batches, each over the same core.

- ``owned``: a ``Batcher``'s task group: a collector and worker slots.
- ``driven``: the decorator outside ``async with``: the callers take turns leading.
- ``thread``: a sync function's serving thread, an ``owned`` driver in a loop of its own.
- ``execute``: calling ``fn`` on a batch and handing the outcomes back (all three).
"""
