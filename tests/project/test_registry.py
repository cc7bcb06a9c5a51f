"""The one registry type (:mod:`al.registry`): the error line, names, descriptions,
duplicates, specs with an argument; and every plug-in family is one."""

from __future__ import annotations

import pytest

from al.registry import Registry, Spec, UnknownNameError, summary


def _shapes() -> Registry[type]:
    shapes: Registry[type] = Registry("shape")

    @shapes.register("circle")
    class Circle:
        """A round shape.

        Not part of the summary.
        """

    @shapes.register("square", description="four equal sides")
    class Square:
        """Ignored: the description wins."""

    @shapes.register("polygon", argument="<number of sides>")
    class Polygon:
        """A shape with straight sides. Any number of them."""

    return shapes


def test_an_unknown_name_is_one_error_line_listing_the_names() -> None:
    shapes = _shapes()
    with pytest.raises(UnknownNameError) as err:
        shapes.get("cirle")
    assert str(err.value) == (
        "unknown shape 'cirle'; expected one of: circle, square, polygon:<number of sides>"
    )
    assert isinstance(err.value, ValueError) and isinstance(err.value, LookupError)
    with pytest.raises(ValueError, match="unknown shape 'hexagon'"):
        shapes["hexagon"]


def test_names_in_registration_order_and_lookup() -> None:
    shapes = _shapes()
    assert shapes.names() == ("circle", "square", "polygon")
    assert list(shapes) == list(shapes.names()) and len(shapes) == 3
    assert "square" in shapes and "hexagon" not in shapes
    square = shapes.get("square")
    assert shapes["square"] is square and shapes.name_of(square) == "square"
    assert shapes.name_of(object) is None
    assert [n for n, _ in shapes.items()] == list(shapes.names())


def test_describe_gives_each_name_one_line() -> None:
    assert _shapes().describe() == {
        "circle": "A round shape.",
        "square": "four equal sides",
        "polygon": "A shape with straight sides.",
    }


def test_summary_is_the_first_sentence_on_one_line() -> None:
    def wrapped() -> None:
        """A first sentence that goes on
        over two lines. A second one.

        A second paragraph.
        """

    assert summary(wrapped) == "A first sentence that goes on over two lines."
    assert summary(object()) == "The base class of the class hierarchy."
    assert summary(lambda: None) == ""


def test_a_second_registration_of_a_name_is_refused() -> None:
    shapes = _shapes()
    with pytest.raises(ValueError, match="shape 'circle' is already registered"):
        shapes.register("circle", int)
    assert shapes.get("circle") is not int
    with pytest.raises(ValueError, match="without ':'"):
        shapes.register("a:b", int)


def test_register_without_a_decorator_and_none_as_an_object() -> None:
    options: Registry[int | None] = Registry("option")
    assert options.register("none", None, description="nothing") is None
    assert options.register("one", 1) == 1
    assert options.get("none") is None and options.get("one") == 1
    assert options.describe()["none"] == "nothing"


def test_registered_holds_a_name_inside_the_block_only() -> None:
    shapes = _shapes()
    with shapes.registered("oval", float, description="stretched") as obj:
        assert obj is float and shapes.get("oval") is float
        assert shapes.names()[-1] == "oval" and shapes.describe()["oval"] == "stretched"
    assert "oval" not in shapes and "oval" not in shapes.describe()
    with pytest.raises(ValueError, match="already registered"), shapes.registered("circle", int):
        pass
    assert shapes.get("circle") is not int


def test_parse_splits_and_checks_a_spec() -> None:
    shapes = _shapes()
    polygon = shapes.parse(" Polygon : 6 ")
    assert polygon == Spec("polygon", shapes.get("polygon"), "6")
    assert shapes.parse("circle") == Spec("circle", shapes.get("circle"), "")
    assert shapes.argument("polygon") == "<number of sides>"
    assert shapes.argument("circle") is None
    assert shapes.problem("square") is None
    assert shapes.problem("square:4") == "shape 'square' takes no argument, got 'square:4'"
    assert shapes.problem("polygon") == (
        "shape 'polygon' needs an argument: polygon:<number of sides>"
    )
    assert shapes.problem("hexagon:6") == (
        "unknown shape 'hexagon:6'; expected one of: circle, square, polygon:<number of sides>"
    )


def test_an_optional_argument_and_its_check() -> None:
    shapes = _shapes()

    def sides(arg: str) -> str | None:
        return None if arg.isdigit() else f"{arg!r} is not a number of sides"

    shapes.register("star", int, argument="<points>", optional=True, check=sides)
    assert shapes.choices()[-2:] == ("star", "star:<points>")
    assert shapes.parse("star") == Spec("star", int, "")
    assert shapes.parse("star:5") == Spec("star", int, "5")
    assert shapes.argument("star") == "<points>"
    assert shapes.problem("star:five") == "shape 'star': 'five' is not a number of sides"
    assert shapes.problem("star:") == "shape 'star' needs an argument: star:<points>"
    assert "star, star:<points>" in shapes.unknown("sun")


def _families() -> dict[str, Registry]:
    from al.acquisition import ACQUISITIONS, MF_ACQUISITIONS, STRATEGIES
    from al.baselines import BASELINES
    from al.entrypoints.grid_backends import BACKENDS
    from al.loop.schemes import SCHEMES
    from al.loop.stopping import STOPPING_RULES
    from al.models import MODELS
    from al.oracles import ORACLES
    from al.uncertainty import UNCERTAINTIES
    from hpo.config import PRUNERS, SAMPLERS

    return {
        "model": MODELS,
        "uncertainty": UNCERTAINTIES,
        "acquisition": ACQUISITIONS,
        "multi-fidelity acquisition": MF_ACQUISITIONS,
        "strategy": STRATEGIES,
        "oracle": ORACLES,
        "baseline": BASELINES,
        "data scheme": SCHEMES,
        "stopping rule": STOPPING_RULES,
        "backend": BACKENDS,
        "sampler": SAMPLERS,
        "pruner": PRUNERS,
    }


@pytest.mark.parametrize("family", list(_families()))
def test_every_plug_in_family_is_a_registry_with_one_error_line(family: str) -> None:
    registry = _families()[family]
    assert isinstance(registry, Registry) and registry.family == family
    assert registry.names(), family
    described = registry.describe()
    assert list(described) == list(registry.names())
    assert all(line and "\n" not in line for line in described.values()), described
    with pytest.raises(ValueError) as err:
        registry.get("no-such-name")
    line = str(err.value)
    assert line == f"unknown {family} 'no-such-name'; expected one of: " + ", ".join(
        registry.choices()
    )
    assert "\n" not in line


def test_classes_know_their_registry_names() -> None:
    """Registered where they are defined: a class's name needs no other module."""
    from al.baselines import BASELINES, OracleBaseline
    from al.oracles import ORACLES

    for name, cls in ORACLES.items():
        assert cls.kind() == name
    assert BASELINES.name_of(OracleBaseline) in ("model", "pretrained")
    for name, cls in BASELINES.items():
        if cls is not None and cls is not OracleBaseline:
            assert cls.name == name
