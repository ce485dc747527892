"""The service's background machinery: the runner of server-side studies and the GC policy."""
