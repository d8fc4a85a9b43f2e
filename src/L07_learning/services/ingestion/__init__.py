"""Ingestion, the first stage of the loop: parsed CloudEvents become training examples.

``pipeline`` (``IngestionPipeline``: the one entry point, one transaction per batch) runs ``parsing`` (raw event ->
record or E70xx), ``prescan`` (content scan before the transaction), ``joining`` (trace+score joins, §1.7),
``rejections`` (stored rejected events), ``sweep`` (join window and TTL), ``storage_form`` (redacted rows) and
``isolation`` (retries, E7014, bisection to the event at fault). ``records`` (the §1.2-§1.5 event payloads),
``examples`` (trace -> chat-format example, §1.10) and ``rewards`` (reward signals and preference pairs, §5.5).
``services/training_data_extractor.py`` is the brief's face over it; ``events/`` only carries the envelopes in and out.
"""
