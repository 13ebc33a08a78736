-- churn_model's online traffic: the instances the website sends to the churn endpoint.
--
-- One instance per customer of the newest customer snapshot (the customers active now, whose
-- churn label is not yet observable), with exactly the features churn_model is trained on. The
-- traffic generator (`lakehouse-ml traffic`) samples these rows; the monitoring report compares
-- the logged instances with the model's training rows.
SELECT
  tenure_days,
  age,
  region,
  acquisition_channel,
  email_opt_in,
  recency_days,
  frequency_orders,
  monetary_total,
  avg_order_value,
  units_per_order,
  avg_discount,
  active_days,
  share_web,
  share_app,
  share_store,
  share_mobile,
  distinct_categories,
  top_category,
  top_category_share,
  sessions,
  pages_per_session,
  avg_session_seconds,
  session_conversion_rate
FROM customer_features
WHERE snapshot_date = (SELECT MAX(snapshot_date) FROM customer_features)
