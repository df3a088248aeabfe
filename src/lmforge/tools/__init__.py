"""Tools around training: the preflight doctor, hyper-parameter sweeps, multi-process launch."""
