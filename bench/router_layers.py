#!/usr/bin/env python3
"""Which encoder states should the router read? Accuracy, the forgetting/gain trade-off and
decoding throughput per choice, on a finished routed experiment.

    python bench/router_layers.py RESULTS [--form SVD_r16] [--layers 0 1 2 0,2 2,-1 ...]

RESULTS: the output folder of a run of ``hparams/mini_routed.yaml`` (its ``routed/``: the
router's feature cache, the operating-points cost table of ``--form``, the throughput subset).
For each layer choice: a router trained as the driver trains it (same classes, sampling,
seed), its test accuracy, the rule chosen on validation and its test Forgetting % and Gain
kept (:mod:`aode.operating`, from the cost table: the per-route costs do not depend on the
router, so nothing is decoded again), the best test Gain kept at <= 2 % forgetting (a bound,
chosen on test), and the throughput of a routed model with this router against the base on
the same batches. A router that reads no later than a middle state stops the encoder there
(:meth:`aode.models.ASRModel.encoder_states`), which is where the throughput comes from.
Writes ``RESULTS/routed/router_layers.md`` and prints it.
"""

import argparse
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _layers(text):
    return tuple(int(x) for x in text.split(","))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="the output folder of a finished run of hparams/mini_routed.yaml")
    parser.add_argument("--form", default="SVD_r16", help="the routed folder whose cost table is used")
    parser.add_argument("--layers", nargs="+", type=_layers, default=[(0,), (1,), (2,), (0, 2), (1, 2), (2, -1)])
    parser.add_argument("--budget", type=float, default=2.0)
    parser.add_argument("--batch_size", type=int, default=25)
    args = parser.parse_args(argv)

    from aode.operating import choose
    from aode.operating import route_costs
    from aode.operating import row_of_rule
    from aode.operating import rule_of
    from aode.operating import sweep
    from aode.report import markdown
    from aode.route import Router
    from aode.route import router_report
    from aode.route import set_features
    from aode.route import train_router
    from aode.routed import build_routed_model
    from aode.routed import measure_throughput
    from aode.routed import read_routed_info

    routed = os.path.join(args.results, "routed")
    folder = os.path.join(routed, args.form)
    info = read_routed_info(folder)
    trained = Router.load(os.path.join(routed, "router"))
    classes = trained.info["manifests"]
    made = trained.info["made_from"]
    original = trained.info["original"]
    corpus = os.path.join(args.results, "corpus")
    domains = info["domains"]
    tests = {d: os.path.join(corpus, d, "test.csv") for d in domains} | {
        f"general_{s}": os.path.join(corpus, "general", f"test_{s}.csv") for s in ("clean", "other")
    }
    valids = {f"{d} valid": os.path.join(corpus, d, "valid.csv") for d in domains} | {
        "general_valid": os.path.join(corpus, "general", "valid.csv")
    }
    costs_folder = os.path.join(routed, "operating", args.form, "costs")
    costs = route_costs(folder, tests | valids, costs_folder, progress=False, normalizer="basic", batch_size=25)
    experts = {}
    for d in domains:
        with open(os.path.join(args.results, "eval", f"expert_{d}", f"{d}.json"), encoding="utf-8") as f:
            experts[d] = json.load(f)["wer"]
    subset = {
        os.path.splitext(os.path.basename(p))[0]: p
        for p in sorted(glob.glob(os.path.join(routed, "throughput", "*.csv")))
    }
    records = []
    for layers in args.layers:
        name = "layers_" + "_".join(str(i) for i in layers)
        out = os.path.join(routed, "router_layers", name)
        router = train_router(
            original,
            classes,
            os.path.join(out, "router"),
            layers=layers,
            utterances_per_class=made["utterances_per_class"],
            threshold=made["threshold"],
            seed=made["seed"],
            progress=False,
            feature_cache=os.path.join(routed, "features"),
        )
        labels = {d: d for d in domains} | {"general_clean": "general", "general_other": "general"}
        report = router_report(
            router,
            original,
            tests,
            os.path.join(out, "test_report"),
            labels=labels,
            progress=False,
            feature_cache=os.path.join(routed, "features"),
        )
        features = set_features(router, original, tests | valids, os.path.join(routed, "features"), progress=False)
        common = dict(route_of_class=info["route_of_class"])
        valid_rows = sweep(
            router,
            {s: features[s] for s in valids},
            costs,
            forgetting_sets=["general_valid"],
            target_sets={f"{d} valid": d for d in domains},
            **common,
        )
        test_rows = sweep(
            router,
            {s: features[s] for s in tests},
            costs,
            forgetting_sets=["general_clean", "general_other"],
            target_sets={d: d for d in domains},
            reference=experts,
            **common,
        )
        chosen = choose(valid_rows, args.budget)
        chosen_test = row_of_rule(test_rows, rule_of(chosen)) if chosen else None
        bound = choose(test_rows, args.budget)
        routed_folder = os.path.join(out, f"routed_{args.form}")
        if not os.path.isdir(routed_folder):
            build_routed_model(
                info["base"],
                info["experts"],
                routed_folder,
                form=info["form"],
                rank=info["rank"],
                energy=info["energy"],
                router=os.path.join(out, "router"),
                fallback=info["fallback"],
            )
        speed = measure_throughput(routed_folder, subset, batch_size=args.batch_size, oracle=False)
        sets = report["sets"]
        records.append(
            {
                "layers": ", ".join(str(i) for i in layers),
                "domains routed right %": round(100 * min(sets[d]["accuracy"] for d in domains), 1),
                "general clean / other to base %": f"{100 * sets['general_clean']['accuracy']:.0f} / "
                f"{100 * sets['general_other']['accuracy']:.0f}",
                "chosen rule": f"t {chosen['threshold']:g}, bias {chosen['general_bias']:g}, {chosen['fallback']}"
                if chosen
                else "-",
                "test Forgetting % (chosen)": round(chosen_test["Forgetting %"], 2) if chosen_test else "-",
                "test Gain kept (chosen)": round(chosen_test["Gain kept"], 3) if chosen_test else "-",
                f"best test Gain kept at <= {args.budget:g} % (bound)": round(bound["Gain kept"], 3) if bound else "-",
                "throughput / one model": round(speed["routed_utt_per_s"] / speed["base_utt_per_s"], 3),
            }
        )
        print(records[-1], flush=True)
    text = markdown(records)
    with open(os.path.join(routed, "router_layers.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
