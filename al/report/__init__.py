"""The comparison report: read campaigns back from the tracking server (:mod:`.read`),
statistics on their histories (:mod:`.stats`, :mod:`.paired`), the paired bootstrap of
test predictions (:mod:`.bootstrap`), the calibration of the predicted std
(:mod:`.uncertainty`), the report model (:mod:`.build`),
Markdown/HTML rendered from one section list by Jinja2 templates (:mod:`.render`), and what
goes back to the tracking server (:mod:`.server`: the report run, run links, the best
arm's alias).

The command that ties them together is :func:`al.entrypoints.compare.run_compare`.
"""

from al.report.bootstrap import (
    BOOTSTRAP_SEED,
    N_RESAMPLES,
    BootstrapCI,
    aligned_errors,
    paired_bootstrap,
)
from al.report.build import (
    GridReport,
    Report,
    adjust_primary,
    build_report,
    converged_comparisons,
    default_targets,
    reference_arms,
    resolve_baseline,
)
from al.report.display import (
    arms_display,
    calibration_display,
    checkpoint_display,
    converged_errors_display,
    converged_paired_display,
    fidelity_display,
    final_model_display,
    paired_display,
    paired_final_display,
    savings_display,
    summary_display,
)
from al.report.paired import (
    label_savings,
    labels_to_reference_final,
    labels_to_reference_final_paired,
    paired_checkpoints,
    paired_differences,
    paired_final,
    paired_summary,
)
from al.report.read import (
    KEY_COLUMNS,
    MATCH_SETTINGS,
    PREDICTION_FRAME_COLUMNS,
    REPORT_METRICS,
    RUN_COLUMNS,
    SOURCE_CONVERGED,
    SOURCE_FINAL_ROUND,
    CompareError,
    Selection,
    assign_arms,
    dedupe_runs,
    fetch_converged_predictions,
    fetch_final_round_predictions,
    fetch_histories,
    fetch_predictions,
    fidelity_costs,
    find_campaign_runs,
    join_histories,
    runs_frame,
    tracking_uri,
)
from al.report.render import (
    METHODS,
    PER_SEED_TABLE,
    WARM,
    Figure,
    Section,
    Table,
    draw_figures,
    draw_uncertainty_figures,
    render_sections,
    report_sections,
    write_report,
    write_tables,
)
from al.report.server import (
    BestArm,
    alias_best,
    best_arm,
    grid_parent,
    log_report,
    run_links,
    ui_base,
)
from al.report.stats import (
    BETTER,
    CONVERGED_ERRORS,
    CONVERGED_METRICS,
    CONVERGED_PREFIX,
    COST_FROM_PREFIX,
    COST_METRICS,
    FINAL_ERRORS,
    FINAL_UNCERTAINTY,
    NO_DIFFERENCE,
    NOT_REACHED,
    ONE_SEED,
    TIME_METRICS,
    TOO_FEW,
    WORSE,
    MeanCI,
    auc_range_note,
    checkpoint_steps,
    checkpoint_table,
    common_range,
    curve_auc,
    final_values,
    holm,
    interpolate_curve,
    labels_to_reach,
    learning_curves,
    mean_ci,
    reached_at_start,
    run_aucs,
    seed_key,
    summary_table,
    t_quantile,
    t_test,
    time_per_round,
    verdict,
    verdict_p,
)
from al.report.uncertainty import (
    calibration,
    reliability_bins,
    uncertainty_tables,
    z_scores,
)
