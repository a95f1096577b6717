"""The OpenCTI platform emulator: see `server` (the entry point) and `platform`."""
