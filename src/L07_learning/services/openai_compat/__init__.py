"""OpenAI-compatible fine-tuning on L07 (contract §9): ``files`` stores uploaded training files, ``jobs`` maps a
fine-tuning request onto an import through the quality filter, a dataset version and an L07 training job, and
``shapes`` writes L07 state in the objects the OpenAI API documents. The REST router (``api/routers/
openai_fine_tuning.py``) only translates HTTP."""
