"""An evaluation report as a folder (``spklip eval --out``): metrics.json, the markdown tables and the confusion
plot, written all or nothing, and replacing only an earlier report (`spklip.outdir`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from spklip.eval.evaluate import EvalReport, confusion_figure
from spklip.outdir import TEMP_MARKER, check_replaceable, make_temp, read_marker, replace_dir

REPORT_MARKER = "spklip_eval.json"  # in every `write_report` folder: what wrote it and the files it holds


def report_files(root: Path) -> set[str] | None:
    """The files `write_report` wrote in `root` (listed by its marker), or None when `root` has no marker."""
    marker = read_marker(root / REPORT_MARKER, ("written_by", "files"))
    if not marker or marker["written_by"] != "spklip eval" or not isinstance(marker["files"], list):
        return None
    return {REPORT_MARKER, *map(str, marker["files"])}


def check_report_out(out_dir: str | Path) -> None:
    """Raise `spklip.outdir.RefusedError` unless `out_dir` is absent, empty or an earlier `write_report` folder."""
    check_replaceable(out_dir, report_files, "a spklip eval report")


def write_report(report: EvalReport, out_dir: str | Path, provenance: dict[str, Any] | None = None) -> Path:
    """Write metrics (JSON), tables and the confusion plot to a folder (``spklip eval --out``), all or nothing.

    An existing `out_dir` is replaced only when it is empty or an earlier report (see `check_report_out`).
    `provenance` (checkpoint, data, split ...) goes into the marker file beside the list of files.
    """
    out = Path(out_dir)
    check_report_out(out)
    tmp = make_temp(out)
    try:
        (tmp / "metrics.json").write_text(json.dumps(report.metrics, indent=1, sort_keys=True))
        for name, text in report.tables.items():
            (tmp / name).write_text(text)
        if report.confusion is not None:
            import matplotlib.pyplot as plt  # lazy: heavy, and only a report with a confusion matrix needs it

            fig = confusion_figure(report.confusion, report.confusion_classes)
            fig.savefig(tmp / "confusion_matrix.png", dpi=100)
            plt.close(fig)
        files = sorted(p.name for p in tmp.iterdir() if p.name != TEMP_MARKER)  # the marker stays behind
        (tmp / REPORT_MARKER).write_text(json.dumps({"written_by": "spklip eval", "files": files,
                                                     **(provenance or {})}, indent=1, default=str))
        check_report_out(out)  # again: it may have changed while the report was computed
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
