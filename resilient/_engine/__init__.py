"""_engine: see ARCHITECTURE.md."""
