-- customer_segments_model's gate rows: the customers a retrained candidate's segments must describe
-- at least as well as the serving version's (on the spec's gate metric, davies_bouldin_index)
-- before it is promoted.
--
-- The newest customer snapshot: the customers active now, the rows the segments are used on. The
-- candidate trained on these rows; the serving version, trained on an older snapshot, never saw
-- them. Both versions' clusters of these rows are scored in one feature space (see
-- lakehouse_ml.deployment). Same feature columns as the model, no keys.
SELECT
  recency_days,
  frequency_orders,
  monetary_total,
  avg_order_value,
  distinct_categories,
  share_app
FROM customer_features
WHERE snapshot_date = (SELECT MAX(snapshot_date) FROM customer_features)
