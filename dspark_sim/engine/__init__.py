"""A small, real PyTorch speculative-decoding engine (gpt-fast style: model.py + generate.py).

It measures what the simulator predicts: acceptance by position, tokens per target pass (tau) and
wall-clock speed-ups, and writes them as traces (`dspark_sim.config.traces`) the simulator can replay.
Import the submodules directly (`dspark_sim.engine.model`, `...generate`); this package import stays
free of torch so `dspark-sim --help` works without the `engine` extra installed.
"""
