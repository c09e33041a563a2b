"""Pre-warmed pools: running containers kept ready per template and handed out on start."""
