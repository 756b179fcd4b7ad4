"""I/O: one module per outside system, each translating that system's errors into Hecate's."""
