"""tabom: post-training masked diffusion language models with TABOM.

Trajectory-Aligned optimization via Boltzmann Modeling (arXiv 2605.11854): self-distil
decoding trajectories, train under time-delay masking with an entropy ranking loss.
See ``docs/method.md`` for the map from the paper to the code.
"""

__version__ = "0.1.0"
