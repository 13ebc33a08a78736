-- customer_features: one row per (customer, snapshot date), for churn models.
--
-- Snapshots fall every @snapshot_interval_days days, starting @lookback_days after the first
-- order. For a snapshot date S:
--   * behaviour features use the orders and web sessions of [S - @lookback_days, S);
--   * profile features (tenure, region, ...) come from raw_customers as of S;
--   * the label `churned` is TRUE when the customer places no order in [S, S + @churn_horizon_days),
--     and NULL when that horizon reaches past the last loaded order day (not yet observable).
-- Customers enter a snapshot when they ordered at least once in its lookback window.
--
-- Parameters: @lookback_days INT64, @snapshot_interval_days INT64, @churn_horizon_days INT64.
WITH
bounds AS (
  SELECT MIN(order_date) AS first_day, MAX(order_date) AS last_day
  FROM raw_orders
),
snapshots AS (
  SELECT snapshot_date
  FROM bounds,
    UNNEST(GENERATE_DATE_ARRAY(
      DATE_ADD(bounds.first_day, INTERVAL @lookback_days DAY),
      DATE_ADD(bounds.last_day, INTERVAL 1 DAY),
      INTERVAL @snapshot_interval_days DAY)) AS snapshot_date
),
-- One row per customer and day with orders: keeps the snapshot joins small.
order_days AS (
  SELECT
    o.customer_id,
    o.order_date,
    COUNT(DISTINCT o.order_id) AS orders,
    COUNT(*) AS lines,
    SUM(o.quantity) AS units,
    SUM(o.unit_price * o.quantity) AS revenue,
    SUM(o.discount) AS discount_sum,
    COUNTIF(o.channel = 'web') AS web_lines,
    COUNTIF(o.channel = 'app') AS app_lines,
    COUNTIF(o.channel = 'store') AS store_lines,
    COUNTIF(o.channel = 'marketplace') AS marketplace_lines,
    COUNTIF(o.device = 'mobile') AS mobile_lines
  FROM raw_orders AS o
  GROUP BY o.customer_id, o.order_date
),
category_days AS (
  SELECT o.customer_id, o.order_date, p.category, COUNT(*) AS lines
  FROM raw_orders AS o
  JOIN raw_products AS p ON p.product_id = o.product_id
  GROUP BY o.customer_id, o.order_date, p.category
),
session_days AS (
  SELECT
    customer_id,
    session_date,
    COUNT(*) AS sessions,
    SUM(pages_viewed) AS pages,
    SUM(duration_seconds) AS duration_seconds,
    COUNTIF(converted) AS converted_sessions
  FROM raw_web_sessions
  WHERE customer_id IS NOT NULL
  GROUP BY customer_id, session_date
),
behaviour AS (
  SELECT
    d.customer_id,
    s.snapshot_date,
    DATE_DIFF(s.snapshot_date, MAX(d.order_date), DAY) AS recency_days,
    SUM(d.orders) AS frequency_orders,
    SUM(d.revenue) AS monetary_total,
    SAFE_DIVIDE(SUM(d.revenue), SUM(d.orders)) AS avg_order_value,
    SAFE_DIVIDE(SUM(d.units), SUM(d.orders)) AS units_per_order,
    SAFE_DIVIDE(SUM(d.discount_sum), SUM(d.lines)) AS avg_discount,
    SAFE_DIVIDE(SUM(d.web_lines), SUM(d.lines)) AS share_web,
    SAFE_DIVIDE(SUM(d.app_lines), SUM(d.lines)) AS share_app,
    SAFE_DIVIDE(SUM(d.store_lines), SUM(d.lines)) AS share_store,
    SAFE_DIVIDE(SUM(d.marketplace_lines), SUM(d.lines)) AS share_marketplace,
    SAFE_DIVIDE(SUM(d.mobile_lines), SUM(d.lines)) AS share_mobile,
    COUNT(*) AS active_days
  FROM snapshots AS s
  JOIN order_days AS d
    ON d.order_date >= DATE_SUB(s.snapshot_date, INTERVAL @lookback_days DAY)
    AND d.order_date < s.snapshot_date
  GROUP BY d.customer_id, s.snapshot_date
),
category_mix AS (
  SELECT
    customer_id,
    snapshot_date,
    COUNT(*) AS distinct_categories,
    -- Most bought category in the window; ties go to the first name alphabetically.
    MIN(IF(rank_in_customer = 1, category, NULL)) AS top_category,
    SAFE_DIVIDE(MAX(IF(rank_in_customer = 1, lines, NULL)), SUM(lines)) AS top_category_share
  FROM (
    SELECT
      c.customer_id,
      s.snapshot_date,
      c.category,
      SUM(c.lines) AS lines,
      ROW_NUMBER() OVER (
        PARTITION BY c.customer_id, s.snapshot_date
        ORDER BY SUM(c.lines) DESC, c.category) AS rank_in_customer
    FROM snapshots AS s
    JOIN category_days AS c
      ON c.order_date >= DATE_SUB(s.snapshot_date, INTERVAL @lookback_days DAY)
      AND c.order_date < s.snapshot_date
    GROUP BY c.customer_id, s.snapshot_date, c.category
  )
  GROUP BY customer_id, snapshot_date
),
engagement AS (
  SELECT
    w.customer_id,
    s.snapshot_date,
    SUM(w.sessions) AS sessions,
    SAFE_DIVIDE(SUM(w.pages), SUM(w.sessions)) AS pages_per_session,
    SAFE_DIVIDE(SUM(w.duration_seconds), SUM(w.sessions)) AS avg_session_seconds,
    SAFE_DIVIDE(SUM(w.converted_sessions), SUM(w.sessions)) AS session_conversion_rate
  FROM snapshots AS s
  JOIN session_days AS w
    ON w.session_date >= DATE_SUB(s.snapshot_date, INTERVAL @lookback_days DAY)
    AND w.session_date < s.snapshot_date
  GROUP BY w.customer_id, s.snapshot_date
),
future AS (
  SELECT d.customer_id, s.snapshot_date, SUM(d.orders) AS orders_in_horizon
  FROM snapshots AS s
  JOIN order_days AS d
    ON d.order_date >= s.snapshot_date
    AND d.order_date < DATE_ADD(s.snapshot_date, INTERVAL @churn_horizon_days DAY)
  GROUP BY d.customer_id, s.snapshot_date
)
SELECT
  b.customer_id,
  b.snapshot_date,
  DATE_DIFF(b.snapshot_date, c.signup_date, DAY) AS tenure_days,
  EXTRACT(YEAR FROM b.snapshot_date) - c.birth_year AS age,
  c.region,
  c.acquisition_channel,
  c.email_opt_in,
  b.recency_days,
  b.frequency_orders,
  b.monetary_total,
  b.avg_order_value,
  b.units_per_order,
  b.avg_discount,
  b.active_days,
  b.share_web,
  b.share_app,
  b.share_store,
  b.share_marketplace,
  b.share_mobile,
  m.distinct_categories,
  m.top_category,
  m.top_category_share,
  COALESCE(e.sessions, 0) AS sessions,
  COALESCE(e.pages_per_session, 0) AS pages_per_session,
  COALESCE(e.avg_session_seconds, 0) AS avg_session_seconds,
  COALESCE(e.session_conversion_rate, 0) AS session_conversion_rate,
  CASE
    WHEN DATE_ADD(b.snapshot_date, INTERVAL @churn_horizon_days - 1 DAY) > bounds.last_day THEN NULL
    ELSE COALESCE(f.orders_in_horizon, 0) = 0
  END AS churned
FROM behaviour AS b
CROSS JOIN bounds
JOIN raw_customers AS c ON c.customer_id = b.customer_id
JOIN category_mix AS m ON m.customer_id = b.customer_id AND m.snapshot_date = b.snapshot_date
LEFT JOIN engagement AS e ON e.customer_id = b.customer_id AND e.snapshot_date = b.snapshot_date
LEFT JOIN future AS f ON f.customer_id = b.customer_id AND f.snapshot_date = b.snapshot_date
WHERE c.signup_date < b.snapshot_date
