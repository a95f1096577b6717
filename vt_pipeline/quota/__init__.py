"""VirusTotal quota visibility: the `virustotal_quota` asset and its schedule."""
