"""``wconv report SWEEP``: the paper's tables and figures for one sweep, with the confirmation verdicts, as
Markdown, CSV and LaTeX tables, PNG figures and an ``index.html`` that shows them together offline.

The report folder is wconv's only where its manifest says so: files written by an earlier report are
replaced (and removed when no longer produced), anything else in the folder is left alone, and a foreign file
in the way of one the report would write stops the report before anything is written. Everything is
rendered into a temporary folder first, so a failure never leaves a half-written report.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from analysis.frames import Frames, ResultsError, load
from analysis.query import best_alpha, compact_view, format_table, search_trials
from analysis.store import Store, masked_url
from wconv.status import TERMINAL

MANIFEST = "wconv-report.json"
GENERATOR = "wconv report"


class ReportFolderError(Exception):
    """The report folder cannot be written as asked; one line naming the path and what to do."""


class Progress:
    """One live line on a terminal (``\\r``), one line per step elsewhere (logs, CI)."""

    def __init__(self, total: int, out: TextIO):
        self.total, self.done, self.out = total, 0, out
        self.live = out.isatty()

    def step(self, what: str) -> None:
        self.done += 1
        line = f"report [{self.done}/{self.total}] {what}"
        if self.live:
            self.out.write("\r\033[K" + line)
            if self.done == self.total:
                self.out.write("\n")
        else:
            self.out.write(line + "\n")
        self.out.flush()


def write_report(source: str | Store | Frames, sweep: str, out: Path | str, *, progress_to: TextIO | None = None,
                 ) -> Path:
    """Render the report of ``sweep`` into ``out``; return the path of its ``index.html``. Progress goes to
    ``progress_to`` (default: standard error)."""
    from analysis import figures, tables

    out = Path(out)
    owned = _owned_files(out)
    frames = (source if isinstance(source, Frames) else load(source, sweep=sweep)).select(sweep)
    info = frames.sweep(sweep)
    search = search_trials(frames)
    if search.empty:
        raise ResultsError(f"sweep {sweep!r} has no search trials yet; run `wconv run` on its sweep file first")
    if not search["status"].isin(TERMINAL).any():
        raise ResultsError(f"sweep {sweep!r} has no finished trial yet ({len(search)} running); "
                           "run the report again when some have finished")
    if info.get("metric") is None or info.get("mode") not in ("min", "max"):
        raise ResultsError(f"sweep {sweep!r} has no metric/mode recorded (a partly written database); "
                           "run the sweep again to record it")

    results = tables.results_table(frames, info)
    listing = [results, tables.timing_table(frames, info)]
    confirm = tables.confirmation_table(frames, info)
    if confirm is not None:
        listing.append(confirm)
    plots = figures.plots(frames, info)
    planned = ["best_alpha.csv", *(f"{t.name}{suffix}" for t in listing for suffix in (".md", ".csv", ".tex")),
               *(f"figures/{p.name}" for p in plots), "index.html"]
    _check_foreign(out, owned, planned)
    progress = Progress(len(listing) + len(plots) + 2, progress_to or sys.stderr)

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    # Staged beside the final files (same filesystem), so publishing is a rename per file.
    staging = Path(tempfile.mkdtemp(prefix=".wconv-report-", dir=out))
    try:
        written: list[str] = []
        best = best_alpha(frames, sweep, by="model")
        (staging / "best_alpha.csv").write_text(_best_csv(best))
        written.append("best_alpha.csv")
        progress.step("best α per model")
        for table in listing:
            for suffix, text in ((".md", table.markdown()), (".csv", table.csv()), (".tex", table.latex())):
                (staging / f"{table.name}{suffix}").write_text(text)
                written.append(f"{table.name}{suffix}")
            progress.step(f"table {table.name}")
        (staging / "figures").mkdir()
        shown: list[tuple] = []
        for plot in plots:
            try:
                fig = plot.draw()
            except figures.NotDrawn as exc:
                shown.append((plot, None, str(exc)))
                progress.step(f"figure {plot.name} skipped: {exc}")
                continue
            figures.save(fig, staging / "figures" / plot.name)
            written.append(f"figures/{plot.name}")
            shown.append((plot, f"figures/{plot.name}", None))
            progress.step(f"figure {plot.name}")
        (staging / "index.html").write_text(_index_html(info, frames, best, listing, shown, source))
        written.append("index.html")
        progress.step("index.html")
        _publish(staging, out, owned, written, sweep)
    except BaseException:
        shutil.rmtree(out if created else staging, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return out / "index.html"


# ---------------------------------------------------------------- the report folder


def _owned_files(out: Path) -> set[str]:
    """The files an earlier report wrote into ``out`` (from its manifest); refuse a path that is not a folder."""
    if out.exists() and not out.is_dir():
        raise ReportFolderError(f"report folder {out} is a file; choose another --out")
    manifest = out / MANIFEST
    if not manifest.exists():
        return set()
    try:
        data = json.loads(manifest.read_text())
        if data.get("generator") != GENERATOR:
            raise ValueError
        return {str(f) for f in data["files"]}
    except (ValueError, KeyError, TypeError):
        raise ReportFolderError(f"{manifest} is not a wconv report manifest; choose another --out") from None


def _check_foreign(out: Path, owned: set[str], written: list[str]) -> None:
    foreign = [name for name in written if (out / name).exists() and name not in owned]
    if foreign:
        raise ReportFolderError(f"{out / foreign[0]} exists and was not written by wconv report"
                                f"{f' (nor {len(foreign) - 1} more)' if len(foreign) > 1 else ''}; "
                                "move it away or choose another --out")


def _publish(staging: Path, out: Path, owned: set[str], written: list[str], sweep: str) -> None:
    for name in written:
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, target)
    for stale in sorted(owned - set(written)):
        path = out / stale
        if path.is_file():
            path.unlink()
    manifest = {"generator": GENERATOR, "sweep": sweep, "written_at": _now(), "files": sorted(written)}
    tmp = out / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, out / MANIFEST)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _best_csv(best) -> str:
    return format_table(best, "csv")


# ---------------------------------------------------------------- index.html

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2.2rem; }
.meta { color: #555; font-size: 0.92rem; }
table.results { border-collapse: collapse; margin: 0.8rem 0 1.6rem; font-size: 0.9rem; }
table.results caption { caption-side: top; text-align: left; color: #444; padding-bottom: 0.4rem; max-width: 1100px; }
table.results th, table.results td { border-bottom: 1px solid #e3e3e3; padding: 0.25rem 0.7rem; text-align: left; }
table.results th { background: #f6f6f6; }
figure { margin: 1.2rem 0 2rem; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.9rem; max-width: 1000px; }
.note { background: #fff7e6; border-left: 4px solid #e66101; padding: 0.5rem 0.8rem; max-width: 1000px; }
.skipped { color: #a33; }
"""

_SECTIONS = {"search": "The search", "paper": "The paper's figures", "confirmation": "Confirmation"}


def _index_html(info: dict, frames: Frames, best, listing, shown, source) -> str:
    from analysis.tables import Table

    trials = search_trials(frames)
    counts = trials["status"].value_counts().to_dict()
    url = masked_url(source) if isinstance(source, (str, Path)) else repr(source)
    parts = [f"<h1>Sweep {html.escape(info['name'])}</h1>",
             f"<p class='meta'>{html.escape(str(info.get('task')))} · selection metric "
             f"<b>{html.escape(str(info['metric']))}</b> ({'higher' if info['mode'] == 'max' else 'lower'} is better)"
             f" · {len(trials)} search trials ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}) · "
             f"results {html.escape(str(url))} · written {_now()}</p>",
             "<p class='note'>A search picks the α that did best on the runs it is scored on, so its gain over "
             "α = 1 is biased upward. The verdict comes from the confirmation: the chosen α and α = 1 retrained on "
             "fresh seeds and compared seed by seed. <i>unconfirmed</i> means no confirmation has finished "
             "on two or more seeds yet (<code>wconv confirm</code>).</p>",
             "<h2>Best α per model</h2>", _best_html(best), *_decomposition_html(best)]
    parts.append("<h2>Tables</h2>")
    for table in listing:
        assert isinstance(table, Table)
        parts.append(table.html())
        parts.append(f"<p class='meta'>Also as <a href='{table.name}.md'>Markdown</a>, "
                     f"<a href='{table.name}.csv'>CSV</a> (full precision), <a href='{table.name}.tex'>LaTeX</a>.</p>")
    section = None
    for plot, path, skipped in shown:
        if plot.section != section:
            section = plot.section
            parts.append(f"<h2>{_SECTIONS.get(section, section)}</h2>")
        parts.append(f"<figure><h3>{html.escape(plot.title)}</h3>")
        if path:
            parts.append(f"<img src='{html.escape(path)}' alt='{html.escape(plot.title)}'>")
        else:
            parts.append(f"<p class='skipped'>Not rendered: {html.escape(skipped)}.</p>")
        parts.append(f"<figcaption>{html.escape(plot.caption)}</figcaption></figure>")
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
            f"<title>wconv report — {html.escape(info['name'])}</title>\n<style>{_CSS}</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")


def _decomposition_html(best) -> list[str]:
    """One line per confirmed (model, kernel): the gain and what each control reproduces of it."""
    from analysis.tables import IDENTITY_NOTE

    lines = [(r["model"], r["kernel_size"], r["decomposition"]) for _, r in best.iterrows()
             if r.get("decomposition")]
    if not lines:
        return []
    items = "".join(f"<li><b>{html.escape(str(m))} {k}×{k}</b>: {html.escape(text)}</li>" for m, k, text in lines)
    shaped = any(isinstance(r.get("controls"), dict) and {"init-shape", "lr-shape"} <= set(r["controls"])
                 for _, r in best.iterrows())
    note = f"<p class='meta'>{html.escape(IDENTITY_NOTE)}.</p>" if shaped else ""
    return [f"<h3>Where the gain comes from (confirmation)</h3><ul>{items}</ul>{note}"]


def _best_html(best) -> str:
    """The same compact view as ``wconv best --by model``."""
    return compact_view(best).to_html(index=False, classes="results", border=0, escape=True)
