"""spklip's runtime: the only package that imports Ray or MLflow. It runs the library (spklip.config, model, data,
eval, train) on Ray Train, Tune and Data, and records runs in MLflow.

* A run: `launcher.fit(plan.RunSpec) -> FitResult` (plan -> `plan.RunPlan`, `mlflow_run` opened and closed, Ray Train's
  `TorchTrainer` whose `worker` gets one `worker.WorkerPlan`), `inprocess.train_in_process` for the same loop with no
  Ray; `epoch_eval` and `model_log` report to MLflow.
* Ray: `rayenv` (start or join Ray, capacity, storage), `ray_private` (every use of Ray's private API),
  `torch_store` (the loopback rendezvous), `reader` (the one Ray Data reader of shards), `parallel` (parallel builds).
* MLflow: `tracking/` (the failure-tolerant `Tracker` and its spool), `logs` (what a run prints on the driver).
* Sweeps: `tune/` (Ray Tune + Optuna over `SweepSpec`s, and the report read back from MLflow).

The package exports nothing at its top: import its modules.
"""
