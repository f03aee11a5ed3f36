"""Auto-annotation (``task=annotate``): object captions, Q&A templates, box conventions, splitting
and the LLaVA / JSONL export."""
