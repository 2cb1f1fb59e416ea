"""Numeric flags of every `gd` sub-command are checked while parsing: a bad value is one
error line naming the flag, exit status 2, and nothing is read or written.

`gd data make --res -7` used to exit 0 and write `"resolution": -7` into a manifest.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from engine.cli import main
from engine.cli_args import (
    count_range,
    float_range,
    int_range,
    name_list,
    nonnegative_int,
    positive_int,
)
from engine.data.make import MakeConfig, make_dataset

# (sub-command words, flag, bad value); OUT is replaced by a path that must not appear.
BAD = [
    (["data", "make", "OUT", "--objects", "2"], "--res", "0"),
    (["data", "make", "OUT", "--objects", "2"], "--res", "-7"),
    (["data", "make", "OUT", "--objects", "2"], "--res", "1e9"),
    (["data", "make", "OUT", "--objects", "2"], "--res", "big"),
    (["data", "make", "OUT", "--res", "64"], "--objects", "0"),
    (["data", "make", "OUT", "--objects", "2"], "--seed", "-1"),
    (["data", "make", "OUT", "--objects", "2"], "--workers", "-2"),
    (["data", "make", "OUT", "--objects", "2"], "--views-in", "0"),
    (["data", "make", "OUT", "--objects", "2"], "--views-target", "-1"),
    (["data", "make", "OUT", "--objects", "2"], "--samples", "0"),
    (["data", "make", "OUT", "--objects", "2"], "--splits", "test,tset"),
    (["data", "make", "OUT", "--objects", "2"], "--splits", ""),
    (["data", "montage", "ROOT", "OUT"], "--count", "0"),
    (["data", "montage", "ROOT", "OUT"], "--tile", "-5"),
    (["render", "IN", "--cameras", "CAMS", "--out", "OUT"], "--sh-degree", "-1"),
    (["render", "IN", "--cameras", "CAMS", "--out", "OUT"], "--sh-degree", "4"),
    (["reconstruct", "CAMS", "-o", "OUT"], "--budget", "0"),
    (["evaluate", "object-tiny", "ROOT", "--out", "OUT"], "--limit", "0"),
    (["evaluate", "object-tiny", "ROOT", "--out", "OUT"], "--images", "-1"),
    (["evaluate", "object-tiny", "ROOT", "--out", "OUT"], "--image-views", "0"),
    (["train", "--data", "ROOT", "--out", "OUT"], "--steps", "0"),
    (["train", "--data", "ROOT", "--out", "OUT"], "--batch-size", "-1"),
    (["train", "--data", "ROOT", "--out", "OUT"], "--target-views", "0"),
    (["train", "--data", "ROOT", "--out", "OUT"], "--lr", "0"),
    (["train", "--data", "ROOT", "--out", "OUT"], "--lr", "nan"),
    (["train", "--data", "ROOT", "--out", "OUT"], "--grad-clip", "-1"),
    (["train", "--data", "ROOT", "--out", "OUT"], "--warmup", "-1"),
    (["train", "--data", "ROOT", "--out", "OUT"], "--render-size", "-64"),
    (["train", "--data", "ROOT", "--out", "OUT"], "--feature-dropout", "1"),
    (["train", "--data", "ROOT", "--out", "OUT"], "--log-every", "0"),
    (["train", "--data", "ROOT", "--out", "OUT"], "--val-every", "0"),
    (["train", "--data", "ROOT", "--out", "OUT"], "--checkpoint-every", "0"),
    (["train", "--data", "ROOT", "--out", "OUT"], "--threads", "-1"),
    (["train", "--data", "ROOT", "--out", "OUT"], "--max-steps", "0"),
]


@pytest.mark.parametrize(
    ("words", "flag", "value"),
    BAD,
    ids=[f"{w[0]}{w[1] if w[0] == 'data' else ''}{f}={v}" for w, f, v in BAD],
)
def test_bad_numbers_are_refused_while_parsing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], words: list[str], flag: str, value: str
) -> None:
    (tmp_path / "root").mkdir()
    names = {"OUT": tmp_path / "out", "ROOT": tmp_path / "root",
             "IN": tmp_path / "in.ply", "CAMS": tmp_path / "transforms.json"}  # fmt: skip
    argv = [str(names.get(w, w)) for w in words] + [f"{flag}={value}"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error:" in line]
    assert len(errors) == 1 and f"argument {flag}" in errors[0], err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]  # nothing written


def test_good_values_parse() -> None:
    from engine.cli import build_parser

    args = build_parser().parse_args(
        ["data", "make", "out", "--objects", "3", "--res", "8", "--seed", "0", "--workers", "0",
         "--splits", "test,val"]
    )  # fmt: skip
    assert (args.objects, args.res, args.seed, args.workers) == (3, 8, 0, 0)
    assert args.splits == ("test", "val")
    args = build_parser().parse_args(
        ["train", "--lr", "3e-4", "--feature-dropout", "0", "--render-size", "0", "--threads",
         "0"]
    )  # fmt: skip
    assert (args.lr, args.feature_dropout, args.render_size, args.threads) == (3e-4, 0.0, 0, 0)


def test_checkers_messages() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="positive integer, got '0'"):
        positive_int("0")
    with pytest.raises(argparse.ArgumentTypeError, match="must be an integer, got '1.5'"):
        nonnegative_int("1.5")
    with pytest.raises(argparse.ArgumentTypeError, match=r"integer in 8\.\.8192, got '4'"):
        int_range(8, 8192)("4")
    with pytest.raises(argparse.ArgumentTypeError, match=r"number in \[0, 1\), got '1.0'"):
        float_range(0.0, 1.0, high_open=True)("1.0")
    with pytest.raises(argparse.ArgumentTypeError, match="finite number, got 'inf'"):
        float_range(0.0, 1.0)("inf")
    with pytest.raises(argparse.ArgumentTypeError, match="out of a, b"):
        name_list(["a", "b"])("a,c")
    assert float_range(0.0, 1.0)("1") == 1.0


def test_count_range_parses_counts_and_ranges_and_refuses_the_rest(tmp_path: Path, capsys) -> None:
    assert count_range("4") == (4, 4)
    assert count_range("2-8") == (2, 8)
    for bad in ("0", "8-2", "a-b", "2-", "-3", "1-2-3", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="LOW-HIGH"):
            count_range(bad)
    # From the command line: one usage error, exit 2, no run folder.
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(out), "--rig-views", "8-2"])
    assert exc.value.code == 2 and "--rig-views" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [("resolution", -7), ("resolution", 0), ("objects", 0), ("views_in", 0),
     ("views_target", 0), ("samples", 0), ("seed", -1), ("workers", -1),
     ("resolution", 2.5), ("splits", ("tset",)), ("splits", ())],
)  # fmt: skip
def test_make_dataset_refuses_bad_settings_before_writing(
    tmp_path: Path, field: str, value: object
) -> None:
    cfg = MakeConfig(out=tmp_path / "props", objects=2, resolution=64, progress=False)
    setattr(cfg, field, value)
    with pytest.raises(ValueError, match=field if field != "splits" else "unknown splits"):
        make_dataset(cfg)
    assert list(tmp_path.iterdir()) == []


def test_config_flags_come_from_the_documented_fields() -> None:
    """`gd train`'s flags are TrainConfig's documented fields: each with its help, its
    checker, None when not given, and bools flipping their default."""
    import dataclasses

    from engine.cli_args import add_config_flags
    from engine.train_config import TrainConfig

    parser = argparse.ArgumentParser()
    names = add_config_flags(parser, TrainConfig)
    documented = [f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("help")]
    undocumented = {f.name for f in dataclasses.fields(TrainConfig)} - set(documented)
    assert set(names) <= set(documented) and undocumented == {"extra"}
    assert {"steps", "feature_dropout", "densify", "freeze_backbone", "init"} <= set(names)
    assert "model" not in names and "betas" not in names
    helps = {a.dest: a.help for a in parser._actions if a.dest in names}
    assert all(helps[n] for n in names)
    args = parser.parse_args(["--steps", "7", "--no-densify", "--freeze-backbone"])
    assert (args.steps, args.densify, args.freeze_backbone, args.lr) == (7, False, True, None)
    with pytest.raises(SystemExit):
        parser.parse_args(["--feature-dropout", "1.0"])
