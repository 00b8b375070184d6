"""The quickstart without stumbles: what `make` and `infaas serve` tell a first-time user
agrees with the README, and a first start says what it will take."""

from __future__ import annotations

import subprocess
from pathlib import Path

from api.bootstrap import wait_all
from api.command import EXAMPLE, example_command, first_start_notice
from infaas.settings import load_settings
from infaas.wire import JobStatus
from infaas.zoo.images import image_model_id

REPO = Path(__file__).resolve().parents[2]


def _quickstart() -> str:
    readme = (REPO / "README.md").read_text()
    return readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]


def test_the_printed_example_is_the_readmes(tmp_path: Path) -> None:
    lines = [line.strip() for line in _quickstart().splitlines()]
    assert EXAMPLE in lines
    # with the defaults the README assumes, `serve` prints exactly that line
    assert example_command(load_settings(), "http://127.0.0.1:8000") == EXAMPLE
    # elsewhere it says where, and the line stays a valid command
    moved = example_command(load_settings(data_dir=tmp_path), "http://127.0.0.1:8123")
    assert moved == f"{EXAMPLE} --data-dir {tmp_path} --url http://127.0.0.1:8123"
    from infaas.cli import build_parser

    args = build_parser().parse_args(moved.split()[1:])
    assert args.task == "digits" and args.min_accuracy == 0.95 and args.example


def test_a_first_start_says_what_it_takes_and_hints_small(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    full = first_start_notice(settings, small=False)
    assert full is not None and "minutes" in full and "--small" in full
    small = first_start_notice(settings, small=True)
    assert small is not None and "--small" not in small
    (tmp_path / "credentials").mkdir()
    (tmp_path / "credentials" / "demo.json").write_text("{}")
    assert first_start_notice(settings, small=False) is None  # not a first start


def test_the_small_and_full_zoos_name_their_image_models_apart() -> None:
    assert image_model_id("resnet18", small=False) == "images-resnet18"
    assert image_model_id("resnet18", small=True) == "images-resnet18-32px"


class Jobs:
    """A model owner's view of preparation jobs that move on each poll."""

    def __init__(self, states: list[tuple[str, int]]) -> None:
        self.states = states
        self.polls = 0

    def job(self, model_id: str) -> JobStatus:
        state, done = self.states[min(self.polls, len(self.states) - 1)]
        self.polls += 1
        return JobStatus.model_validate(
            {"model_id": model_id, "state": state, "done": done, "total": 2}
        )


def test_progress_reaches_a_log_file_as_plain_lines() -> None:
    said: list[str] = []
    owner = Jobs([("running", 0), ("running", 1), ("running", 1), ("ready", 2)])
    wait_all(owner, ["m"], say=said.append, interactive=False)  # type: ignore[arg-type]
    assert said == ["m: running 0/2", "m: running 1/2", "m: ready 2/2"]


def test_make_refuses_an_old_python_and_says_how_to_pick_another() -> None:
    out = subprocess.run(
        ["make", "-s", "python-version", "PYTHON=python2.7-does-not-exist"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0
    assert "needs Python >= 3.11" in out.stderr and "make PYTHON=" in out.stderr


def test_serve_needs_no_dev_extra() -> None:
    makefile = (REPO / "Makefile").read_text()
    serve = makefile.split("\nserve:", 1)[1].splitlines()[0]
    assert "$(BASE)" in serve and "$(STAMP)" not in serve
    base = makefile.split("\n$(BASE):", 1)[1].split("\n\n", 1)[0]
    assert "pip install -q -e .\n" in base + "\n" and "[dev]" not in base
