"""Emulators of the external services, for tests, the demo and the benchmarks.

- `virustotal/`: the VirusTotal API v3 (`server` runs it; `api` is the aiohttp app; `corpus`,
  `objects`, `rulesets`, `samples`, `filetypes` build what it serves; `fixtures` loads captured
  responses instead; `faults`, `quotas`, `ioc_stream` are its behaviours).
- `opencti/`: the OpenCTI platform's GraphQL API and workers (`server` runs it; `graphql`,
  `resolvers`, `views`, `store`, `platform`, `amqp` are its parts).
- `rabbitmq.py`: a private, real `rabbitmq-server`, which the OpenCTI emulator and tests share.

Import the submodules directly, so that using one emulator does not import the other's
dependencies.
"""
