"""The small core every stage stands on: configuration, errors, vocabularies and labels, SQL
quoting, the warehouse's tables, the calendar, rendering and run summaries. It imports no stage."""
