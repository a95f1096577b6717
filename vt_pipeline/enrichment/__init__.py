"""Enrichment on request: the OpenCTI enrichment sensor, the VirusTotal enrichment job, settings."""
