"""Models: from feature snapshots to a calibrated, evaluated, registered model with its card.

`spec` declares a model (YAML under `models/`) and its time split; `cohort` says who is in it and
what counts as the outcome; `fit` fits LightGBM and its calibrator; `scorers` are what it is
compared with; `metrics` and `evaluate` measure it with intervals; `explain` summarises TreeSHAP;
`data_summary`, `card` and `figures` write the model card; `tracking` is MLflow; `approve` is the
governance step that makes a version the champion; `train` runs them in order.
"""
