"""The merge registry: a registration carries everything about a method (issue 21, item 5).

A method defined here, in one decorated function, is listed, has its options checked, merges
through the driver and is read from a mergekit config through the mapping it declares, with
nothing edited anywhere else; and every registered method says what it is and where it is from.
"""

import os

import pytest
import torch
from safetensors.torch import load_file
from test_merge import save_folder
from test_merge import toy_state

from aode.merge import available_methods
from aode.merge import get_method
from aode.merge import get_spec
from aode.merge import merge_models
from aode.merge import register
from aode.merge import registry
from aode.merge.checks import check_method_options
from aode.merge.checks import fraction
from aode.merge.linear import weighted_average
from aode.merge.mergekit_config import SUPPORTED_METHODS
from aode.merge.mergekit_config import MergekitConfigError
from aode.merge.mergekit_config import prepare_merge
from aode.merge.mergekit_config import read_mergekit_config
from aode.merge.registry import MergekitMapping
from aode.merge.registry import MergekitParam


@pytest.fixture
def halfway(monkeypatch):
    """Registers "halfway" (``theta_0 + share * (mean(theta_i) - theta_0)``, mergekit name
    ``halfway_mk``) for one test; the registry is restored afterwards."""
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))

    @register(
        "halfway",
        display_name="Halfway",
        reference="a method made up for this test",
        needs_base=True,
        elementwise=True,
        checks={"share": fraction},
        mergekit=MergekitMapping(
            {"weight": MergekitParam("non_base", float), "share": MergekitParam("shared", float, 0.5)},
            options={"share": "share"},
            method="halfway_mk",
        ),
    )
    def halfway(tensors, weights, base, generator=None, share=0.5):
        return base + share * (weighted_average(tensors, weights) - base)

    return halfway


def _folders(tmp_path):
    states = [toy_state(seed) for seed in range(3)]
    return states, [save_folder(tmp_path / f"m{i}", s) for i, s in enumerate(states)]


def test_a_new_method_is_one_registration(halfway, tmp_path):
    spec = get_spec("halfway")
    assert "halfway" in available_methods() and spec.display_name == "Halfway" and spec.needs_base
    assert SUPPORTED_METHODS["halfway_mk"] == "halfway"
    # options: declared by the signature, checked by the registration, everywhere
    assert check_method_options("halfway", {"share": 0.25}) == {"share": 0.25}
    with pytest.raises(ValueError, match=r"unknown halfway option 'shar' \(did you mean 'share'\?\)"):
        check_method_options("halfway", {"shar": 0.25})
    with pytest.raises(ValueError, match=r"halfway option share must be a fraction from 0 to 1 \(got 1.5\)"):
        check_method_options("halfway", {"share": 1.5})
    x = torch.ones(3)
    with pytest.raises(ValueError, match="halfway option share must be a fraction"):
        get_method("halfway")([x], torch.ones(1), x, None, share=-1.0)
    states, (base, a, b) = _folders(tmp_path)
    with pytest.raises(ValueError, match="halfway option share must be a fraction"):
        merge_models([a, b], tmp_path / "never", method="halfway", base=base, options={"share": 2.0}, progress=False)
    assert not (tmp_path / "never").exists()
    # the driver merges with it
    out = merge_models([a, b], tmp_path / "out", method="halfway", base=base, options={"share": 0.25}, progress=False)
    merged = load_file(os.path.join(out, "model.safetensors"))
    name = "decoder.proj.weight"
    want = states[0][name] + 0.25 * ((states[1][name] + states[2][name]) / 2 - states[0][name])
    assert torch.equal(merged[name], want)
    # and a mergekit config names it by its mergekit name, with its parameters
    config = {
        "merge_method": "halfway_mk",
        "base_model": base,
        "models": [{"model": a, "parameters": {"weight": 1.0}}, {"model": b, "parameters": {"weight": 1.0}}],
        "parameters": {"share": 0.25},
    }
    plan = read_mergekit_config(config)
    assert (plan.method, plan.members, plan.base, plan.options) == ("halfway", [a, b], base, {"share": 0.25})
    out = merge_models(output=str(tmp_path / "mk"), progress=False, **prepare_merge(plan))
    assert torch.equal(load_file(os.path.join(out, "model.safetensors"))[name], want)
    assert read_mergekit_config({**config, "parameters": None}).options == {"share": 0.5}  # mergekit's default
    with pytest.raises(MergekitConfigError, match="unknown parameter 'lambda' for mergekit's halfway_mk"):
        read_mergekit_config({**config, "parameters": {"lambda": 1.0}})


def test_the_new_method_is_gone_after_its_test():
    assert "halfway" not in available_methods() and "halfway_mk" not in SUPPORTED_METHODS


def test_registrations_are_checked(monkeypatch):
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))

    def method(tensors, weights, base, generator=None, share=0.5):
        return tensors[0]

    with pytest.raises(ValueError, match=r"checks for options it does not take: \['shares'\]"):
        register("bad_checks", checks={"shares": fraction})(method)
    with pytest.raises(ValueError, match="mergekit method 'ties' is already mapped onto 'ties'"):
        register("another_ties", mergekit=MergekitMapping({"weight": MergekitParam("non_base", float)}, method="ties"))(
            method
        )
    with pytest.raises(ValueError, match="'share' is no parameter of the mapping"):
        MergekitMapping({"weight": MergekitParam("non_base", float)}, options={"share": "share"})
    with pytest.raises(ValueError, match="base_model must be one of"):
        MergekitMapping({"weight": MergekitParam("non_base", float)}, base_model="first")
    with pytest.raises(ValueError, match="merge method 'average' is already registered"):
        register("average")(method)


def test_every_method_says_what_it_is():
    """Every method the package registers has a display name and the reference it comes from
    (methods other tests register for themselves are not the package's)."""
    undescribed = set()
    for name in available_methods():
        if not get_method(name).__module__.startswith("aode.merge."):
            continue
        spec = get_spec(name)
        if not (isinstance(spec.display_name, str) and spec.display_name.strip()):
            undescribed.add(name)
        elif not (isinstance(spec.reference, str) and len(spec.reference) > 10):
            undescribed.add(name)
    assert not undescribed, sorted(undescribed)


def test_mergekit_table_comes_from_the_registrations():
    """Each mergekit method maps onto the registered method that declares it, with its
    parameters; the reader needs no list of its own."""
    from aode.merge.mergekit_config import MERGEKIT_PARAMETERS

    declared = {
        spec.mergekit.method: name for name in available_methods() if (spec := get_spec(name)).mergekit is not None
    }
    assert dict(SUPPORTED_METHODS) == declared and declared["linear"] == "average"
    assert set(MERGEKIT_PARAMETERS) == set(declared)
    assert MERGEKIT_PARAMETERS["ties"]["density"].default == 1.0
