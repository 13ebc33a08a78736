-- churn_model's gate rows: the fresh labelled data on which a retrained candidate must match or
-- beat the serving version (on the spec's gate metric, roc_auc) before it is promoted.
--
-- The labelled customers of the newest snapshot whose churn label is observable: the newest rows a
-- label exists for. They are the candidate's SEQ evaluation split (the newest 20% of its six
-- training snapshots), so it never trained on them; the serving version, trained earlier, has
-- never seen them either. Same feature columns as the model, plus the label `churned`.
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
  session_conversion_rate,
  churned
FROM customer_features
WHERE churned IS NOT NULL
  AND snapshot_date = (SELECT MAX(snapshot_date) FROM customer_features WHERE churned IS NOT NULL)
