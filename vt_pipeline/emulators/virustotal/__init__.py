"""The VirusTotal API v3 emulator: see `server` (the entry point) and `api`."""
