"""Fixtures that build the demo GGUF models once per session (filled in by the engines work)."""
