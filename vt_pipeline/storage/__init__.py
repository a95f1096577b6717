"""Local storage: the partition-aware IO manager and the content-addressed sample store."""
