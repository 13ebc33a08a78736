-- Feature drift of a served model: its training rows against the instances it served in one
-- monitoring window, with ML.VALIDATE_DATA_DRIFT (Jensen-Shannon divergence for numerical
-- features, L-infinity distance for categorical ones, as TensorFlow Data Validation computes them).
--
-- A template: lakehouse_ml.monitoring.monitor.bind_tables fills in the two tables (feature columns
-- only), the default thresholds (@numerical_threshold, @categorical_threshold) and the per-feature
-- thresholds (@thresholds, an ARRAY<STRUCT<STRING, FLOAT64>>) from the model's Serving spec.
-- Output: input, metric, threshold, value, is_anomaly — one row per feature.
SELECT *
FROM ML.VALIDATE_DATA_DRIFT(
  TABLE baseline_rows,
  TABLE serving_rows,
  STRUCT(
    @numerical_threshold AS numerical_default_threshold,
    @categorical_threshold AS categorical_default_threshold,
    @thresholds AS thresholds
  )
)
