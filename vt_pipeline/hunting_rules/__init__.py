"""OpenCTI YARA Indicators as VirusTotal Livehunt rulesets (upstream stream connector)."""
