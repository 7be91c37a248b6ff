"""_storage: see ARCHITECTURE.md."""
