"""Ingestion, the first stage of the loop: parsed CloudEvents become training examples.

``pipeline`` (``IngestionPipeline``: idempotency, trace+score joins, rejections, one transaction per batch),
``records`` (the §1.2-§1.5 event payloads), ``examples`` (trace -> chat-format example, §1.10) and ``rewards``
(reward signals and preference pairs, §5.5). ``services/training_data_extractor.py`` is the brief's face over it;
``events/`` only carries the envelopes in and out.
"""
