"""The search's shared words: trial statuses, study user-attr keys and result keys.

Reports, reruns and the tuner all read and write these; nothing here imports Ray or Optuna.
"""

# Study user attr: the sampler and the settings that shape its proposals (search.tune.searcher.sampler_settings).
SAMPLER = "sampler"

# User-attr keys written on every Optuna trial (the report reads these).
STATUS = "status"
REASON = "reason"
EXCESS = "constraint_excess_bytes"
RUNGS = "rungs"
# With train.rung_cooldown_fraction: each rung's score before its cooldown, [[train_s, val_bpb], ...].
RUNGS_BEFORE_COOLDOWN = "rungs_before_cooldown"
TUNE_ID = "tune_trial_id"

COMPLETE, PRUNED, FAILED = "complete", "pruned", "failed"
INFEASIBLE_PREDICTED, INFEASIBLE_MEASURED, RUNNING = "infeasible_predicted", "infeasible_measured", "running"
INTERRUPTED = "interrupted"  # in flight when the driver was stopped; `resume` continues it from its checkpoint
QUEUED = "queued"  # enqueued (--enqueue) and not handed out yet
REPEAT = "repeat"  # the same run config as a trial already launched: never launched (same seed, same result)
STATUSES = (COMPLETE, PRUNED, INFEASIBLE_PREDICTED, REPEAT, INFEASIBLE_MEASURED, FAILED, RUNNING, INTERRUPTED, QUEUED)
# Trials whose config has been (or is being) trained: a repeat of one of them would spend a trial on a known
# outcome. A failed trial's config may be proposed again (the failure may have been the node's).
LAUNCHED_STATUSES = (COMPLETE, PRUNED, INFEASIBLE_MEASURED, RUNNING, INTERRUPTED)

# Result keys the trainable sets (see search.tune.trainable).
FINAL_KEY, FAILED_KEY, FAIL_REASON_KEY, NUMBER_KEY = "final", "failed", "fail_reason", "optuna_number"
# Which trial of its worker process a trial was: 1 in a fresh process, 2+ in one Tune reused (reuse_actors).
WORKER_TRIAL = "worker_trial"

OBJECTIVES = ("val_bpb", "artifact_bytes")
# What a rung report says of the time before training, kept for trials that ASHA stops.
RUNG_TIME_ATTRS = ("startup_s", "compile_s", "wait_s")
# Final metrics copied into the study's user attrs for the report.
FINAL_ATTRS = (
    "val_bpb", "val_bpb_prequant", "val_bpb_sliding", "artifact_bytes", "model_bytes", "code_bytes", "payload_bytes",
    "steps", "train_tokens", "final_train_s", "tokens_per_s", "wall_s", *RUNG_TIME_ATTRS, "eval_s", "export_s",
    "over_limit", "device",
)

# User attr: the enqueued run config (or restarted trial) a trial came from.
ENQUEUED_FROM = "enqueued_from"
REQUEUED = "requeued_as_new_trial"  # user attr: this in-flight trial was started again as a new trial
