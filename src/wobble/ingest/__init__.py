"""Ingest: source extracts → the contract's `persons`, `contacts` and `tags`, or `quarantine`.

Reads every file named by the sources in `wobble.toml` (CSV, Parquet, FHIR R4 Bulk Data NDJSON;
persons first, so that activity can be matched to a registered person), validates each row,
pseudonymises identifiers and writes, per file, in one transaction: the rows that pass; every row
that does not, to `quarantine` with its line and reason; and one `load_ledger` row that reconciles.
Then it writes a data-quality report. `run` drives it; `plan` orders the files; `tabular` and
`fhir` read them (as a `reader.Input`); `validate` finds each row's first reason to fail; `load`
writes what passes; `optout` applies the national data opt-out; `identifiers` holds the NHS
number and pseudonym rules; `quality` writes the report.
"""

from wobble.ingest.load import FileResult
from wobble.ingest.run import IngestResult, ingest
from wobble.ingest.validate import REASONS

__all__ = ["REASONS", "FileResult", "IngestResult", "ingest"]
