"""The VirusTotal layer both domains use: the vt-py resource and the readers of VT objects."""
