"""The ServerApp: the round loop, the run directory and the coordinator's view of the sites."""
