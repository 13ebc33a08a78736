-- transaction_features: one row per order, for anomaly detection (e.g. KMEANS + ML.DETECT_ANOMALIES).
--
-- Daily partitioned on order_date: the query returns the orders of [@start_date, @end_date].
-- Customer-history features look back 90 days before each order, so an order's features are the
-- same whichever partition range computes them.
--
-- Parameters: @start_date DATE, @end_date DATE.
WITH
orders AS (
  SELECT
    o.order_id,
    ANY_VALUE(o.customer_id) AS customer_id,
    ANY_VALUE(o.order_date) AS order_date,
    ANY_VALUE(o.order_ts) AS order_ts,
    ANY_VALUE(o.channel) AS channel,
    ANY_VALUE(o.device) AS device,
    ANY_VALUE(o.region) AS region,
    COUNT(*) AS n_lines,
    SUM(o.quantity) AS total_quantity,
    SUM(o.unit_price * o.quantity) AS order_amount,
    AVG(o.discount) AS avg_discount,
    MAX(o.unit_price) AS max_unit_price,
    AVG(SAFE_DIVIDE(o.unit_price, p.list_price)) AS avg_price_ratio,
    COUNT(DISTINCT p.category) AS n_categories
  FROM raw_orders AS o
  JOIN raw_products AS p ON p.product_id = o.product_id
  -- 90 days of history before the window, for the customer-history features.
  WHERE o.order_date BETWEEN DATE_SUB(@start_date, INTERVAL 90 DAY) AND @end_date
  GROUP BY o.order_id
),
with_history AS (
  SELECT
    orders.*,
    COUNT(*) OVER prior_90_days AS customer_orders_90d,
    AVG(order_amount) OVER prior_90_days AS customer_avg_amount_90d,
    LAG(order_ts) OVER (PARTITION BY customer_id ORDER BY order_ts, order_id) AS previous_order_ts
  FROM orders
  WINDOW prior_90_days AS (
    PARTITION BY customer_id
    ORDER BY UNIX_SECONDS(order_ts)
    RANGE BETWEEN 7776000 PRECEDING AND 1 PRECEDING)
)
SELECT
  h.order_id,
  h.order_date,
  h.order_ts,
  h.customer_id,
  h.channel,
  h.device,
  h.region,
  EXTRACT(HOUR FROM h.order_ts) AS hour_of_day,
  EXTRACT(DAYOFWEEK FROM h.order_date) AS day_of_week,
  h.n_lines,
  h.total_quantity,
  h.order_amount,
  h.avg_discount,
  h.max_unit_price,
  h.avg_price_ratio,
  h.n_categories,
  h.customer_orders_90d,
  SAFE_DIVIDE(h.order_amount, h.customer_avg_amount_90d) AS amount_vs_customer_avg,
  CASE
    WHEN h.previous_order_ts >= TIMESTAMP_SUB(h.order_ts, INTERVAL 90 DAY)
      THEN (UNIX_SECONDS(h.order_ts) - UNIX_SECONDS(h.previous_order_ts)) / 86400.0
  END AS days_since_previous_order,
  DATE_DIFF(h.order_date, c.signup_date, DAY) AS customer_tenure_days
FROM with_history AS h
JOIN raw_customers AS c ON c.customer_id = h.customer_id
WHERE h.order_date BETWEEN @start_date AND @end_date
