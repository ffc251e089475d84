"""The ClientApp: what runs at each site (local training, evaluation, refusals)."""
