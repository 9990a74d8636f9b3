"""The hostile suite's own checks see a run that sends: a valid manifest, run the same way,
starts the simulator and completes its item (so "nothing was sent" means something)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from PIL import Image

from batch.cli import main


def test_a_valid_manifest_is_sent(
    project: Path, sim_starts: list[Any], sent: Callable[[Path], int]
) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buf, "PNG")
    (project / "a.png").write_bytes(buf.getvalue())
    (project / "m.csv").write_text("prompt,image_urls,seed\nx,a.png,9223372036854775807\n")
    assert CliRunner().invoke(main, ["validate", "m.csv"]).exit_code == 0
    result = CliRunner().invoke(main, ["run", "m.csv", "--queue-url", "local"])
    assert result.exit_code == 0, result.output
    assert len(sim_starts) == 1 and sent(project) == 1
