"""_edge: see ARCHITECTURE.md."""
