"""The three command lines speak one language (`manifests.dispatch`): --version, -q/-v, the exit codes,
the program's own name, one precision option, progress bars that TQDM_DISABLE hides, quiet libraries."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cli_runner import error_lines, module_env, run_module

import generation.cli
import manifests.cli
import prep.cli
from manifests.dispatch import build_parser, dispatch

CLIS = {"prep": prep.cli, "manifests": manifests.cli, "generation": generation.cli}


# ------------------------------------------------------------------ the shared options


@pytest.mark.parametrize("package", list(CLIS))
def test_version_and_the_program_names_itself(package):
    from manifests.dispatch import version

    proc = run_module(package, "--version")
    assert proc.returncode == 0 and proc.stdout == f"python -m {package} {version()}\n", proc
    proc = run_module(package, "--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"usage: python -m {package} [--version] [-q | -v] COMMAND"), proc.stdout
    assert "shared options: --version, -q/--quiet, -v/--verbose" in proc.stdout
    command = next(iter(CLIS[package].COMMANDS))
    proc = run_module(package, command, "--help")
    assert proc.returncode == 0 and proc.stdout.startswith(f"usage: python -m {package} {command} ")


def test_the_console_scripts_name_themselves():
    from manifests.dispatch import program_name

    assert (
        program_name("handfirst-manifests", "manifests", "/venv/bin/handfirst-manifests")
        == "handfirst-manifests"
    )
    assert program_name("handfirst-gen", "generation", "/x/generation/__main__.py") == "python -m generation"
    # pytest's own __main__.py is not the package's
    assert program_name("handfirst-prep", "prep", "/x/pytest/__main__.py") == "handfirst-prep"


@pytest.mark.parametrize("cli", list(CLIS.values()), ids=lambda c: c.PROG)
def test_every_subcommand_takes_version_quiet_and_verbose(cli):
    for name in cli.COMMANDS:
        parser, _ = build_parser(cli.PROG, cli.COMMANDS, name)
        options = set(parser._option_string_actions)
        assert {"--version", "-q", "--quiet", "-v", "--verbose"} <= options, (cli.PROG, name)


def test_quiet_and_verbose_do_not_go_together():
    proc = run_module("manifests", "stats", "-q", "-v", "x")
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr


def test_gen_takes_v_and_keeps_log_level_as_another_spelling(tmp_path):
    for flags in (["-v"], ["--log-level", "debug"], ["-q"]):
        proc = run_module("generation", *flags, "evaluate", "--out", str(tmp_path / "x"))
        # past the parser: evaluate's own usage check answers
        assert proc.returncode == 2 and "give --manifest and --generated" in proc.stderr, (flags, proc.stderr)


# ------------------------------------------------------------------ exit codes


def test_a_bad_setting_exits_2_in_every_program(tmp_path):
    proc = run_module("generation", "train-hand", "--manifest", str(tmp_path), "--batch-size", "0")
    assert proc.returncode == 2 and error_lines(proc) == [
        "python -m generation train-hand: error: batch_size (--batch-size) must be >= 1, got 0"
    ]
    proc = run_module("manifests", "validate", str(tmp_path), "--workers", "0")
    assert proc.returncode == 2 and "workers (--workers) must be >= 1, got 0" in proc.stderr


def test_a_run_that_fails_exits_1(tmp_path):
    proc = run_module("manifests", "stats", str(tmp_path / "absent"))
    lines = error_lines(proc)
    assert (
        proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("python -m manifests stats: error: ")
    )


def test_prep_run_needs_an_input(tmp_path):
    proc = run_module("prep", "run", "--out", str(tmp_path / "m"), cwd=tmp_path)
    assert proc.returncode == 2 and error_lines(proc) == [
        "handfirst-prep: error: input (--input) must be set: the dataset to annotate"
    ]
    assert not (tmp_path / "m").exists()
    assert "required; no default" in run_module("prep", "run", "--help").stdout.replace("\n", " ").replace(
        "  ", " "
    )


def test_ctrl_c_exits_130(tmp_path, monkeypatch, capsys):
    (tmp_path / "stop_command.py").write_text(
        'HELP = "stop"\ndef add_arguments(p):\n    pass\ndef run(args):\n    raise KeyboardInterrupt\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert dispatch("tool", {"stop": ("stop_command", "stop")}, ["stop"]) == 130
    assert capsys.readouterr().err == "tool stop: interrupted\n"


# ------------------------------------------------------------------ precision


# The options each command needs before it parses.
REQUIRED = {
    "sample-hand": ["--model", "m", "--keypoints", "k", "--out", "o"],
    "sample-body": ["--model", "m", "--manifest", "x", "--image-id", "i", "--out", "o"],
    "generate": ["--out", "o"],
    "baseline": ["--from-manifest", "x", "--out", "o"],
}
PRECISION_COMMANDS = [
    "generate",
    "baseline",
    "sample-hand",
    "sample-body",
    "train-vae",
    "train-hand",
    "train-body",
]


@pytest.mark.parametrize(
    "command, old, precision",
    [
        ("sample-hand", ["--fp16"], "fp16"),
        ("sample-body", ["--no-fp16"], "fp32"),
        ("generate", ["--dtype", "bfloat16"], "bf16"),
        ("baseline", ["--dtype", "float16"], "fp16"),
        ("train-hand", ["--mixed-precision", "no"], "fp32"),
        ("train-body", ["--mixed-precision", "bf16"], "bf16"),
    ],
)
def test_one_precision_option_and_the_old_ones_warn(command, old, precision, capsys):
    parser, _ = generation.cli.build_parser(command)
    required = REQUIRED.get(command, [])
    assert parser.parse_args([*required, "--precision", "bf16"]).precision == "bf16"
    assert parser.parse_args([*required, *old]).precision == precision
    err = capsys.readouterr().err
    assert f"{old[0]} is deprecated; use --precision {precision}" in err
    assert "--dtype" not in parser.format_help() and "--fp16" not in parser.format_help()


def test_every_model_command_has_precision():
    for command in PRECISION_COMMANDS:
        parser, _ = generation.cli.build_parser(command)
        action = parser._option_string_actions["--precision"]
        assert tuple(action.choices) == ("fp32", "fp16", "bf16"), command


def test_old_precision_keys_still_load():
    """A --config file, a sidecar or a run's config.json written with the old names reads as before."""
    from generation.baseline import BaselineConfig
    from generation.commands.sample_hand import SampleHandConfig
    from generation.generate import GenerateConfig
    from generation.training.hand_config import HandTrainConfig

    assert GenerateConfig.from_dict({"dtype": "float16"}).precision == "fp16"
    assert BaselineConfig.from_dict({"dtype": "float32"}).precision == "fp32"
    assert SampleHandConfig.from_dict({"fp16": True}).precision == "fp16"
    assert HandTrainConfig.from_dict({"mixed_precision": "no"}).precision == "fp32"
    assert HandTrainConfig.from_dict({"mixed_precision": "no", "precision": "bf16"}).precision == "bf16"
    assert "mixed_precision" not in HandTrainConfig().to_dict()


def test_precision_names_torch_dtypes_and_diffusers_gets_dtype():
    import torch

    from generation.models.loading import dtype_argument
    from manifests.settings import SettingError, torch_dtype

    assert torch_dtype("fp32") is torch.float32 and torch_dtype("bf16") is torch.bfloat16
    with pytest.raises(SettingError, match="precision"):
        torch_dtype("float16")

    class OldLoader:
        @classmethod
        def from_pretrained(cls, path, **kwargs):
            """Load.

            torch_dtype (`str` or `torch.dtype`, *optional*):
                the dtype
            """

    assert dtype_argument(torch.float16) == {"dtype": torch.float16}  # the installed diffusers takes it
    assert dtype_argument(torch.float16, OldLoader) == {"torch_dtype": torch.float16}


# ------------------------------------------------------------------ progress bars and quiet libraries


def test_tqdm_disable_hides_every_progress_bar(monkeypatch):
    from generation.evaluate.detection import image_progress as evaluate_bar
    from manifests.progress import progress_bar
    from prep.cluster import _progress as prep_bar

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert not evaluate_bar(3, "detect", True).disable and not prep_bar(3, True).disable
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert evaluate_bar(3, "detect", True).disable and prep_bar(3, True).disable
    assert progress_bar(range(3)).disable
    monkeypatch.delenv("TQDM_DISABLE")
    assert progress_bar(range(3), enabled=False).disable


QUIET_PROBE = """
import logging, os, sys
from manifests.dispatch import configure_logging
configure_logging(int(sys.argv[1]), ("generation",))
from transformers.utils import logging as tl
print(os.environ.get("TQDM_DISABLE"), tl.is_progress_bar_enabled(), tl.get_verbosity() <= logging.WARNING,
      logging.getLogger("accelerate.checkpointing").getEffectiveLevel() <= logging.INFO,
      logging.getLogger("generation.training").getEffectiveLevel() <= logging.INFO)
"""


@pytest.mark.parametrize(
    "level, expected",
    [
        (-1, "1 False False False False"),  # -q: warnings and results only, no bars at all
        (0, "None False False False True"),  # default: the project's INFO lines, libraries quiet
        (1, "None True True True True"),  # -v: everything back
    ],
)
def test_libraries_are_quiet_unless_verbose(level, expected):
    quiet_flags = ("HF_HUB_DISABLE", "TRANSFORMERS_VERB", "TQDM")
    env = {k: v for k, v in module_env().items() if not k.startswith(quiet_flags)}
    proc = subprocess.run(
        [sys.executable, "-c", QUIET_PROBE, str(level)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == expected.split()


def test_gen_turns_diffusers_loading_bars_off_unless_verbose():
    from diffusers.utils import logging as dl

    parser, _ = generation.cli.build_parser("generate")
    try:
        generation.cli._configure(parser.parse_args(["--out", "o"]), own_process=False)
        assert not dl.is_progress_bar_enabled()
        dl.enable_progress_bar()
        generation.cli._configure(parser.parse_args(["--out", "o", "-v"]), own_process=False)
        assert dl.is_progress_bar_enabled()
    finally:
        dl.enable_progress_bar()
        os.environ.pop("HANDFIRST_NATIVE_LOGS", None)


NATIVE_PROBE = r"""
import os, sys
from prep.native_logs import filter_native_stderr, restore_native_stderr
filter_native_stderr()
os.write(2, b"W0000 00:00:1733500000.123456   4242 inference_feedback_manager.cc:114] Feedback manager "
            b"requires a model with a single signature inference.\n")
print("kept: an error line", file=sys.stderr)
restore_native_stderr()
print("after", file=sys.stderr)
"""


def test_native_lines_are_filtered_and_every_other_line_arrives_before_exit():
    env = module_env()
    env.pop("HANDFIRST_NATIVE_LOGS", None)
    proc = subprocess.run(
        [sys.executable, "-c", NATIVE_PROBE], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0 and proc.stderr == "kept: an error line\nafter\n", proc.stderr


def test_training_result_lines_are_rounded(capsys):
    from generation.commands import rounded, run_training
    from generation.training.hand_config import HandTrainConfig

    class Result:
        finished, step, final_loss, run = True, 20, 1.0471234567, "runs/x"

    args = generation.cli.build_parser("train-hand")[0].parse_args([])
    assert run_training("train-hand", HandTrainConfig, args, lambda config: Result()) == 0
    assert capsys.readouterr().out == "finished at step 20; final loss 1.047; run folder runs/x\n"
    assert rounded(None) == "n/a" and rounded(0.000123456) == "0.0001235"


def test_the_dask_dashboard_address_only_where_it_works(monkeypatch):
    import importlib.util

    import prep.cluster

    class Client:
        dashboard_link = "http://127.0.0.1:8787/status"

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bokeh" else real(name, *a)
    )
    assert prep.cluster.dashboard_link(Client()) is None
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "bokeh" else real(name, *a)
    )
    assert prep.cluster.dashboard_link(Client()) == Client.dashboard_link
