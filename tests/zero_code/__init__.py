"""Unmodified programs that `resilient run` protects: none of them imports resilient."""
