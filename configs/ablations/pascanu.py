"""The Pascanu single-unit cliff (lstm_jax.research.pascanu).

Pascanu, Mikolov & Bengio 2013, sec. 2.3 / Fig. 6: x_t = w sigmoid(x_{t-1}) + b.

    python -m lstm_jax.research.pascanu --config configs/ablations/pascanu.py --workdir DIR
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown variant {arg!r}; valid: '' (full), 'smoke'")
    c = ml_collections.ConfigDict()
    c.float64 = True  # evaluate in float64 (the wall is exponentially thin; float32 also works)

    c.model = ml_collections.ConfigDict()
    c.model.num_steps = 50  # recurrent steps (the paper's 50)
    c.model.x0 = 0.5  # initial state x_0
    c.model.target = 0.7  # target of sigmoid(x_50)

    # The standard grid: w in [-4, 12] and b in [-10, 4] show the minimum valley,
    # the bistable region (w > 4) and the wall between the two attractors.
    c.grid = ml_collections.ConfigDict()
    c.grid.w_min = -4.0  # left edge of the w axis
    c.grid.w_max = 12.0  # right edge of the w axis
    c.grid.b_min = -10.0  # bottom edge of the b axis
    c.grid.b_max = 4.0  # top edge of the b axis
    c.grid.num_w = 401  # grid points along w
    c.grid.num_b = 401  # grid points along b (ignored when aligned: the step is set)
    c.grid.zoom = 0.4  # half-width of the zoomed panel around the start
    c.grid.align_to_wall = True  # b step = sigmoid(x0) * w step, so each column hits the wall

    c.descent = ml_collections.ConfigDict()
    c.descent.start_w = 4.5  # start of both trajectories: just below the wall, near the cusp
    c.descent.start_b = -2.4  # (the unclipped run hits the wall on step 5)
    c.descent.learning_rate = 0.3  # plain gradient-descent step size
    c.descent.clip_threshold = 1.0  # Algorithm 1: rescale g when ||g|| >= this
    c.descent.num_steps = 200  # descent steps per trajectory

    if arg == "smoke":
        c.descent.num_steps = 40  # the grid stays standard: the test looks for its wall
    c.lock()
    return c
