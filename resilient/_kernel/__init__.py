"""_kernel: see ARCHITECTURE.md."""
