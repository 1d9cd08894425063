"""The console table of the final metrics."""

from rich.console import Console

from fiqa.eval.report import metrics_table


def test_metrics_table_has_a_row_per_metric_and_a_column_per_set():
    m = {"val/lfw/acc": 0.99, "val/xqlfw/acc": 0.8, "val/xqlfw/erc_auc_fmr1e-3": 0.01, "val/acc_mean": 0.895}
    table = metrics_table(m, title="t")
    assert [c.header for c in table.columns] == ["metric", "lfw", "xqlfw", "all"]
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    assert "erc_auc_fmr1e-3" in text and "0.8950" in text and "0.9900" in text
