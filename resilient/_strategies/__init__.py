"""_strategies: see ARCHITECTURE.md."""
