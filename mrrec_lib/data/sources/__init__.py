"""Raw-data readers; each returns a `SourceData` in the unified schema (see `base.py`)."""
