"""The OpenCTI layer both domains use: the pycti resource (connector, works, entities)."""
