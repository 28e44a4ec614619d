"""``make tables``: the paper's tables with your runs beside them, never mixing protocols.

Rules that keep the comparison honest:

* a column holds numbers of one metric measured under one protocol (equal
  :meth:`~vtp_gen.metrics.report.MetricRecord.comparison_key`); its footnote
  states that protocol in full;
* a run's number joins a paper column only when its protocol equals the
  column's (e.g. FID-50k against the ADM reference batch, LightningDiT-XL/1 at
  80 epochs, no guidance); everything else goes to "your runs" tables, one per
  evaluation set, with its own columns and footnotes, where the paper's numbers
  never appear.

Runs are found as ``<runs>/*/eval/metrics.json`` (written by ``make eval``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vtp_gen.metrics.paper_numbers import TABLES, PaperNumber, paper_numbers
from vtp_gen.metrics.report import MetricRecord, markdown_table, read_metrics_json


@dataclass
class RunResults:
    name: str
    path: Path
    records: list[MetricRecord]
    info: dict = field(default_factory=dict)


def find_runs(runs_dir: str | Path = "runs") -> tuple[list[RunResults], list[str]]:
    """Every ``<runs_dir>/*/eval/metrics.json``; unreadable files are reported, not fatal."""
    found, problems = [], []
    for path in sorted(Path(runs_dir).glob("*/eval/metrics.json")):
        try:
            info, records = read_metrics_json(path)
        except (ValueError, KeyError, TypeError) as err:
            problems.append(f"{path}: skipped ({err})")
            continue
        found.append(RunResults(path.parent.parent.name, path, records, info))
    return found, problems


@dataclass
class Column:
    heading: str
    key: tuple
    example: MetricRecord  # a record of the column, for its protocol and formatting
    cells: dict[str, str] = field(default_factory=dict)  # row name -> formatted value


@dataclass
class Table:
    title: str
    description: str
    columns: list[Column]
    rows: list[str]

    def render(self, footnote_start: int = 1) -> tuple[str, int]:
        """Markdown of the table and its protocol footnotes (one per distinct protocol); returns
        (text, next footnote number)."""
        number = footnote_start
        footnotes: dict = {}
        headings = []
        for column in self.columns:
            protocol = column.example.protocol
            if protocol not in footnotes:
                footnotes[protocol] = number
                number += 1
            arrow = "↑" if column.example.info.higher_is_better else "↓"
            headings.append(f"{column.heading} {arrow} [{footnotes[protocol]}]")
        body = [[row, *[c.cells.get(row, "") for c in self.columns]] for row in self.rows]
        text = [f"### {self.title}", ""]
        if self.description:
            text += [self.description, ""]
        text += [markdown_table(["", *headings], body, ["---", *["--:"] * len(self.columns)]), ""]
        text += [f"<sub>[{n}] {protocol.describe()}</sub>  " for protocol, n in footnotes.items()]
        return "\n".join(text), number


def column_heading(record: MetricRecord) -> str:
    """'gFID-50k', 'rFID-500', 'zero-shot top-1 (%)': the sample count sits in the heading for the
    FID family; the other columns give it in the footnote."""
    if record.info.count_style == "dash":
        return ("g" if record.metric == "gfid" else "") + record.label
    return record.info.title


def _add(columns: list[Column], heading: str, record: MetricRecord, row: str, value: str) -> None:
    for column in columns:
        if column.heading == heading:
            if column.key != record.comparison_key():
                raise ValueError(
                    f"column {heading!r} would mix protocols: {column.key} vs {record.comparison_key()}"
                )
            column.cells[row] = value
            return
    columns.append(Column(heading, record.comparison_key(), record, {row: value}))


def _value_text(record: MetricRecord) -> str:
    return record.formatted() if record.value is not None else "n/a"


def paper_table(
    table_id: str, numbers: Sequence[PaperNumber], runs: Sequence[RunResults], used: set
) -> Table:
    """One paper table; run numbers with a column's exact protocol become extra rows ("run: <name>")."""
    info = TABLES[table_id]
    columns: list[Column] = []
    rows: list[str] = []
    for number in numbers:
        _add(
            columns,
            number.column or column_heading(number.record),
            number.record,
            number.row,
            _value_text(number.record),
        )
        if number.row not in rows:
            rows.append(number.row)
    by_key = {c.key: c for c in columns}
    for run in runs:
        row = f"run: {run.name}"
        for i, record in enumerate(run.records):
            column = by_key.get(record.comparison_key())
            if column is None or record.value is None:
                continue
            column.cells[row] = _value_text(record)
            used.add((run.name, i))
            if row not in rows:
                rows.append(row)
    return Table(info.title, info.description, columns, rows)


def run_tables(runs: Sequence[RunResults], used: set) -> list[Table]:
    """Run numbers that match no paper column: one table per evaluation set (dataset, image size)."""
    groups: dict[tuple, list[tuple[str, MetricRecord]]] = {}
    for run in runs:
        for i, record in enumerate(run.records):
            if (run.name, i) in used:
                continue
            group = (record.protocol.dataset.split(" ")[0], record.protocol.image_size)
            groups.setdefault(group, []).append((run.name, record))
    tables = []
    for (dataset, size), entries in groups.items():
        columns: list[Column] = []
        for run_name, record in entries:
            value = _value_text(record) if record.value is not None or not record.unavailable else "n/a"
            # Same label, other protocol (e.g. another sampler): a separate column, told apart by its footnote.
            heading = column_heading(record)
            taken = [
                c for c in columns if c.heading.split(" #")[0] == heading and c.key != record.comparison_key()
            ]
            match = [c for c in columns if c.key == record.comparison_key()]
            if match:
                match[0].cells[f"run: {run_name}"] = value
                continue
            if taken:
                heading = f"{heading} #{len(taken) + 1}"
            columns.append(Column(heading, record.comparison_key(), record, {f"run: {run_name}": value}))
        rows = []
        for run_name, _ in entries:
            if f"run: {run_name}" not in rows:
                rows.append(f"run: {run_name}")
        tables.append(
            Table(
                f"Your runs on {dataset} at {size} px",
                "Measured with the protocols in the footnotes; the paper has no numbers under these "
                "protocols, so none are shown here.",
                columns,
                rows,
            )
        )
    return tables


def build_tables(runs: Sequence[RunResults]) -> list[Table]:
    used: set = set()
    tables = [paper_table(table_id, paper_numbers(table_id), runs, used) for table_id in TABLES]
    return tables + run_tables(runs, used)


def render_tables(runs_dir: str | Path = "runs") -> str:
    """The whole ``make tables`` output as Markdown."""
    runs, problems = find_runs(runs_dir)
    lines = [
        "# VTP: the paper's numbers and yours",
        "",
        f"Runs found under `{runs_dir}/*/eval/metrics.json`: "
        + (", ".join(r.name for r in runs) if runs else "none (run `make eval` first)")
        + ".",
        "Each column holds one metric under one protocol (footnotes); a number sits beside the paper's "
        "only when it was measured the same way. docs/reproduce.md gives the commands for each paper row.",
        "",
    ]
    lines += [f"- {p}" for p in problems]
    footnote = 1
    for table in build_tables(runs):
        text, footnote = table.render(footnote)
        lines += [text, ""]
    return "\n".join(lines).rstrip() + "\n"
