"""Emulators of the external services (VirusTotal, OpenCTI, ...) for tests, demo and benchmarks.

Import from the submodules (``vt_pipeline.emulators.virustotal``, ``.corpus``, ``.fixtures``) so
that using one emulator does not import the others' dependencies.
"""
