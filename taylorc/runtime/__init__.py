"""Where graphs run: the graph cache, the torch.compile backend, CPU tuning and config."""
