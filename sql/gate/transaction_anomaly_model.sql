-- transaction_anomaly_model's gate rows: the orders a retrained candidate's clusters must describe
-- at least as well as the serving version's (on the spec's gate metric, davies_bouldin_index)
-- before it is promoted.
--
-- The orders of the newest 14 days of transaction_features: today's ordinary orders, the ones
-- anomalies are judged against. The candidate trained on them among all orders; the serving
-- version, trained earlier, never saw them. Both versions' clusters of these rows are scored in
-- one feature space (see lakehouse_ml.deployment). Same feature columns as the model, no keys.
SELECT
  channel,
  device,
  hour_of_day,
  n_lines,
  total_quantity,
  order_amount,
  avg_discount,
  max_unit_price,
  avg_price_ratio,
  n_categories,
  customer_orders_90d,
  amount_vs_customer_avg,
  days_since_previous_order
FROM transaction_features
WHERE order_date > DATE_SUB((SELECT MAX(order_date) FROM transaction_features), INTERVAL 14 DAY)
