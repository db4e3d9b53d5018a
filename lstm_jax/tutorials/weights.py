"""How many weights are in each network?

    python -m lstm_jax.tutorials.weights [--outdir DIR]

The slide's toy network has 2 inputs, 4 hidden units and 1 output.

    vanilla MLP:  x -> h -> y          W_xh = 2*4 = 8,  W_hy = 4*1 = 4
    vanilla RNN:  x -> h -> y, h -> h  W_xh = 8,  W_hh = 4*4 = 16,  W_hy = 4

The slide counts the weight matrices; the biases (b_h: 4, b_y: 1) are real
parameters too and are reported beside them. The counts here are read off the
parameter trees of the project's own models (a `SequenceModel` of one
`rnn_tanh` layer; the MLP is the same model with W_hh removed), not typed in.

In general, with D inputs, H hidden units, O outputs and G gate blocks per
cell (RNN 1, GRU 3, LSTM 4), one layer's fused kernels hold G*H*(D + H + 1)
parameters (`Cell.param_count`; the GRU adds H for its second candidate bias)
and the readout O*(H + 1) (`SequenceModel.param_count`). The MLP is the RNN
less its H*H recurrent weights. Each closed form is checked against the tree.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import jax

from lstm_jax.model import SeqConfig, SequenceModel, count_params
from lstm_jax.research.common import write_json
from lstm_jax.tutorials import common

SLIDE = (2, 4, 1)  # the slide's toy network: D inputs, H hidden units, O outputs
CELLS = {"RNN": "rnn_tanh", "GRU": "gru", "LSTM": "lstm"}
FORMULAS = {
    "MLP": "H(D+1) + O(H+1)",
    "RNN": "H(D+H+1) + O(H+1)",
    "GRU": "3H(D+H+1) + H + O(H+1)",
    "LSTM": "4H(D+H+1) + O(H+1)",
}


def build(net: str, d: int, h: int, o: int) -> tuple[SequenceModel, dict[str, Any]]:
    """The model and its real parameter tree (the MLP's without W_hh)."""
    config = SeqConfig(
        input_dim=d, output_dim=o, hidden_size=h, num_layers=1, cell=CELLS.get(net, "rnn_tanh")
    )
    model = SequenceModel(config)
    params = model.init(jax.random.key(0))
    if net == "MLP":
        layer = {k: v for k, v in params["layers"][0].items() if k != "w_h"}
        params = {"layers": [layer], "head": params["head"]}
    return model, params


def named_counts(params: dict[str, Any]) -> dict[str, int]:
    """The slide's names for the entries of a one-layer tree."""
    layer, head = params["layers"][0], params["head"]
    counts = {"W_xh": layer["w_x"].size}
    if "w_h" in layer:
        counts["W_hh"] = layer["w_h"].size
    counts["W_hy"] = head["w"].size
    counts["b_h"] = layer["b"].size + (layer["b_hn"].size if "b_hn" in layer else 0)
    counts["b_y"] = head["b"].size
    return counts


def closed_form(net: str, model: SequenceModel) -> int:
    """The model code's closed form (the MLP's: the RNN's less W_hh)."""
    h = model.config.hidden_size
    return model.param_count() - (h * h if net == "MLP" else 0)


def run(sizes: Sequence[tuple[int, int, int]] = (SLIDE, (3, 5, 2), (7, 16, 7))) -> dict[str, Any]:
    """The slide's counts, and every closed form beside its tree's count."""
    slide = {net: named_counts(build(net, *SLIDE)[1]) for net in ("MLP", "RNN")}
    checks = []
    for d, h, o in sizes:
        for net in FORMULAS:
            model, params = build(net, d, h, o)
            checks.append(
                {"net": net, "D": d, "H": h, "O": o, "formula": FORMULAS[net],
                 "closed_form": closed_form(net, model), "tree": count_params(params)}
            )  # fmt: skip
    return {"slide": slide, "checks": checks}


def slide_table(results: dict[str, Any]) -> str:
    names = ("W_xh", "W_hh", "W_hy", "b_h", "b_y")
    rows = []
    for net, counts in results["slide"].items():
        weights = sum(counts[k] for k in names[:3] if k in counts)
        rows.append([net, *(counts.get(k, "-") for k in names), weights, sum(counts.values())])
    return common.format_table(["net (2-4-1)", *names, "weights", "with biases"], rows)


def checks_table(results: dict[str, Any]) -> str:
    rows = [
        [c["net"], c["D"], c["H"], c["O"], c["formula"], c["closed_form"], c["tree"],
         "yes" if c["closed_form"] == c["tree"] else "NO"]
        for c in results["checks"]
    ]  # fmt: skip
    header = ["net", "D", "H", "O", "closed form", "= value", "counted in tree", "match"]
    return common.format_table(header, rows)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = common.parse_args("weights", __doc__, argv)
    results = run()
    args.outdir.mkdir(parents=True, exist_ok=True)
    write_json(args.outdir / "weights.json", results)
    print(slide_table(results))
    print()
    print(checks_table(results))
    print(f"Results: {args.outdir / 'weights.json'}")
    if any(c["closed_form"] != c["tree"] for c in results["checks"]):
        raise SystemExit("a closed form disagrees with the parameter tree")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
