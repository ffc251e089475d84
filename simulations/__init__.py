"""Built-in, seeded, offline simulation data: scenarios, generators and partitioning."""
