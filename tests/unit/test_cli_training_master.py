"""The training algorithm's option is ``--training-master`` (``--master`` collided with spark-submit's own on a job's
command line); ``--master`` stays as a deprecated alias until 0.3: the same choices, one warning line on stderr named
like the commands' errors (``sparkdl <command>: ...``, for the jobs too), a one-line usage error when both disagree.

Parsers only: no Spark."""
from __future__ import annotations

import pytest

from sparkdl.cli import build_parser
from sparkdl.cli.options import train_config

REQUIRED = {"train": ["--features", "f.parquet", "--output", "model"], "demo": []}
WARNING = "warning: --master is deprecated, use --training-master (it will be removed in 0.3)"
PARSERS = [pytest.param(False, id="sparkdl"), pytest.param(True, id="job")]


def _parse(command, *argv, job=False):
    return build_parser(job=job).parse_args([command, *REQUIRED[command], *argv])


@pytest.mark.parametrize("job", PARSERS)
@pytest.mark.parametrize("command", ["train", "demo"])
def test_training_master_sets_the_algorithm_silently(capsys, command, job):
    assert _parse(command, job=job).training_master == "averaging"  # the default
    args = _parse(command, "--training-master", "sharing", job=job)
    assert args.training_master == "sharing" and train_config(args).master == "sharing"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("job", PARSERS)
@pytest.mark.parametrize("command", ["train", "demo"])
def test_the_old_master_flag_still_works_and_warns_exactly_once(capsys, command, job):
    plain = vars(_parse(command, "--training-master", "sharing", job=job))
    capsys.readouterr()
    for argv in (["--master", "sharing"], ["--master=sharing"], ["--master", "averaging", "--master", "sharing"],
                 ["--master", "sharing", "--training-master", "sharing"], ["--training-master", "sharing", "--master", "sharing"]):  # fmt: skip
        args = _parse(command, *argv, job=job)
        assert vars(args) == plain, argv  # the same value, nothing else added (MLflow logs vars(args) as params)
        assert capsys.readouterr().err == f"sparkdl {command}: {WARNING}\n", argv  # a job names itself the same way
    with pytest.raises(SystemExit) as info:
        _parse(command, "--master", "bogus", job=job)
    assert info.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err  # the same choices


@pytest.mark.parametrize("job", PARSERS)
@pytest.mark.parametrize("order", [["--training-master", "sharing", "--master", "averaging"],
                                   ["--master", "averaging", "--training-master", "sharing"]])  # fmt: skip
def test_both_flags_disagreeing_is_a_one_line_usage_error(capsys, order, job):
    with pytest.raises(SystemExit) as info:
        _parse("train", *order, job=job)
    assert info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"sparkdl train: {WARNING}",
                     "sparkdl train: error: --training-master sharing and --master averaging disagree (--master is the "
                     "deprecated name of --training-master): give only --training-master"]  # fmt: skip


@pytest.mark.parametrize("job", PARSERS)
@pytest.mark.parametrize("command", ["train", "demo"])
def test_help_shows_training_master_and_mentions_the_old_name_once(capsys, command, job):
    with pytest.raises(SystemExit) as info:
        build_parser(job=job).parse_args([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "[--training-master {averaging,sharing}]" in text and "\n  --training-master {averaging,sharing}\n" in text
    assert "--master " not in text and "[--master" not in text  # no entry of its own, not in the usage
    assert " ".join(text.split()).count("formerly --master: deprecated, removed in 0.3") == 1
