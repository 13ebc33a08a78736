-- transaction_anomaly_model's online traffic: the orders the checkout scores as they arrive.
--
-- The orders of the newest 7 days of transaction_features (a day alone holds too few orders to
-- stand for the traffic at small simulation scales), with exactly the features the model is
-- trained on (the customer-history columns are NULL for a customer's first order; the endpoint
-- puts the training mean in their place, as ML.PREDICT does). The traffic generator
-- (`lakehouse-ml traffic --model transaction_anomaly_model`) samples these rows; the
-- monitoring report compares the logged instances with the model's training rows.
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
WHERE order_date > DATE_SUB((SELECT MAX(order_date) FROM transaction_features), INTERVAL 7 DAY)
