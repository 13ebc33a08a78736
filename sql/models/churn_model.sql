-- churn_model: the probability that a customer places no order in the next 30 days.
--
-- A binary classifier of `churned` on the customer snapshots of customer_features, trained on the
-- snapshots whose label is already observable (churned IS NOT NULL).
--
-- LOGISTIC_REG rather than BOOSTED_TREE_CLASSIFIER: churn here is driven by a few monotone
-- behaviour signals (recency, frequency, spend, engagement, channel mix); a linear model on them
-- ranks customers about as well as boosted trees do on this data, gives calibrated probabilities
-- for thresholds and traffic-light dashboards, has weights an operator can read (ML.WEIGHTS,
-- ML.GLOBAL_EXPLAIN), trains in seconds on BigQuery and locally, and retrains cheaply when drift
-- is detected.
--
-- Training window: the six newest labelled weekly snapshots (see the WHERE clause).
--
-- Features are listed explicitly: no keys (customer_id), no dates as features. share_marketplace
-- is left out because the four channel shares add up to 1.
--
-- Evaluation split: SEQ on the snapshot time. The newest 20% of the labelled rows (the latest
-- snapshots) evaluate the model, so ML.EVALUATE measures it on later weeks than it learned from,
-- as it will be used; a random split would put the same customer's neighbouring weeks on both
-- sides. DATA_SPLIT_COL is excluded from the features automatically; SEQ takes a TIMESTAMP
-- column, hence TIMESTAMP(snapshot_date).
--
-- Registered in the Vertex AI Model Registry as churn_model (model_registry, vertex_ai_model_id).
-- Each training run creates this model under a name of its own (churn_model_<UTC time>_<run>)
-- with the same vertex_ai_model_id, so each run is a new version and none replaces a deployed one.
-- No query parameters: the same statement runs unchanged on BigQuery and locally.
CREATE OR REPLACE MODEL churn_model
OPTIONS (
  model_type = 'LOGISTIC_REG',
  input_label_cols = ['churned'],
  data_split_method = 'SEQ',
  data_split_col = 'snapshot_ts',
  data_split_eval_fraction = 0.2,
  enable_global_explain = TRUE,
  model_registry = 'VERTEX_AI',
  vertex_ai_model_id = 'churn_model'
) AS
SELECT
  TIMESTAMP(snapshot_date) AS snapshot_ts,
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
  -- A sliding window: the six newest labelled weekly snapshots. Churn drivers change (the drift
  -- scenarios show how), so a retrained model should learn how customers behave now.
  AND snapshot_date >= DATE_SUB(
    (SELECT MAX(snapshot_date) FROM customer_features WHERE churned IS NOT NULL), INTERVAL 35 DAY)
