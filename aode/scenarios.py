"""The names an experiment's tables are made of: the paper's scenarios, the tables their rows
go to, and which test sets measure forgetting when none are named.

Plain data and one rule, no imports: :mod:`aode.config` checks a YAML's ``scenarios`` and
``forgetting_sets`` against them, :mod:`aode.experiment` runs the scenarios and
:mod:`aode.report` computes the Forgetting % columns, so the one table lies below all three.
"""

import dataclasses

__all__ = ["Scenario", "SCENARIOS", "SCENARIO_BY_ID", "SCENARIO_IDS", "ALWAYS", "TABLES", "default_forgetting_sets"]


@dataclasses.dataclass(frozen=True)
class Scenario:
    """``id`` as the YAML names it, ``label`` for people, ``needs``: the scenarios whose
    models it starts from, ``table``: the report its rows go to."""

    id: str
    label: str
    needs: tuple[str, ...] = ()
    table: str = "table7"


SCENARIOS = (
    Scenario("experts", "one expert per domain (scenario 1)"),
    Scenario("sequential", "sequential fine-tuning (scenario 2)", ("experts",)),
    Scenario("aode", "AoDE: the average of the experts (scenario 2)", ("experts",)),
    Scenario("aode_with_original", "AoDE with the original as one more member", ("experts",)),
    Scenario("combined", "one fine-tune on all domains' data (scenario 3)"),
    Scenario("resampled", "the same, domains balanced by resampling"),
    Scenario("iterative", "iterative AoDE (paper III-C)", ("aode", "aode_with_original")),
    Scenario("weighted", "each expert x4 with the original", ("experts",), "table8"),
    Scenario("lora", "LoRA experts and their average"),
    Scenario("oracle", "oracle hot swap (scenario 4)", ("experts",)),
    Scenario("methods", "the merge methods of merge_methods", ("experts",), "methods"),
    Scenario("fisher", "Fisher-weighted averaging", ("experts",), "methods"),
    Scenario("weight_search", "merge weights searched on the dev sets", ("experts",), "methods"),
    Scenario("greedy_soup", "greedy soup on the dev sets", ("experts",), "methods"),
    Scenario("routed", "a router and the experts as compact deltas: routed, and oracle routed", ("experts",)),
)
SCENARIO_BY_ID = {s.id: s for s in SCENARIOS}
SCENARIO_IDS = tuple(SCENARIO_BY_ID)
ALWAYS = ("experts",)  # every table's Gain kept is measured against the experts
TABLES = {"table7": "Table VII", "table8": "Table VIII (each member x4)", "methods": "merge methods"}


def default_forgetting_sets(sets):
    """The columns that measure forgetting when none are named: LibriSpeech-like clean/other."""
    found = [s for s in sets if "clean" in s.lower()] + [s for s in sets if "other" in s.lower()]
    return found
