"""Container metrics: stored samples and the CPU arithmetic over them."""
