"""The comparison report: read campaigns back from the tracking server (:mod:`.read`),
statistics on their histories (:mod:`.stats`), the report model (:mod:`.build`), and
Markdown/HTML rendered from one section list by Jinja2 templates (:mod:`.render`).

The command that ties them together is :func:`al.entrypoints.compare.run_compare`.
"""

from al.report.build import (
    GridReport,
    Report,
    arms_display,
    build_report,
    default_targets,
    paired_display,
    resolve_baseline,
    savings_display,
    summary_display,
)
from al.report.read import (
    KEY_COLUMNS,
    REPORT_METRICS,
    RUN_COLUMNS,
    CompareError,
    Selection,
    assign_arms,
    dedupe_runs,
    fetch_histories,
    find_campaign_runs,
    join_histories,
    runs_frame,
    tracking_uri,
)
from al.report.render import (
    METHODS,
    Figure,
    Section,
    Table,
    draw_figures,
    log_report,
    render_sections,
    report_sections,
    write_report,
    write_tables,
)
from al.report.stats import (
    BETTER,
    NO_DIFFERENCE,
    NOT_REACHED,
    TIME_METRICS,
    TOO_FEW,
    WORSE,
    MeanCI,
    common_range,
    curve_auc,
    final_values,
    interpolate_curve,
    label_savings,
    labels_to_reach,
    learning_curves,
    mean_ci,
    paired_differences,
    paired_summary,
    reached_at_start,
    run_aucs,
    seed_key,
    summary_table,
    t_quantile,
    time_per_round,
    verdict,
)
