"""Operating the pipeline: the `unlearn` CLI (cli), scheduled deletion cycles (cycle), version
review (review), the promotion gate (gate), the HTML report (report) and the demo's summary
(summary)."""
