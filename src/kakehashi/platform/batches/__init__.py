"""The Batch API: a JSONL file of requests run through the gateway, durably.

- :mod:`.model`: the batch object and its lifecycle;
- :mod:`.validate`: reading an input file into lines, or OpenAI's ``errors.data[].line``;
- :mod:`.store`: batches and their lines in the platform database, the worker lease, and the
  transaction that commits a line's result with its ledger rows;
- :mod:`.runner`: :class:`~kakehashi.platform.batches.runner.BatchRunner`, which takes batches
  from the store and runs their lines through a ``submit`` callable (the gateway).
"""
