-- customer_segments_model: customer segments from recency, frequency and monetary value (RFM).
--
-- KMEANS on the latest snapshot of customer_features: one row per active customer. The RFM
-- measures are heavily skewed (a few customers spend a lot), so the TRANSFORM clause takes their
-- logarithm before KMEANS standardizes them; ML.PREDICT applies the same TRANSFORM to its input
-- automatically, so callers pass the raw feature columns.
--
-- Features are listed explicitly: no keys (customer_id), no dates.
-- Registered in the Vertex AI Model Registry as customer_segments_model (model_registry,
-- vertex_ai_model_id) and served on its endpoint (sql/serving/, sql/gate/ for retraining).
-- No query parameters: the same statement runs unchanged on BigQuery and locally.
CREATE OR REPLACE MODEL customer_segments_model
TRANSFORM (
  LN(1 + recency_days) AS log_recency_days,
  LN(1 + frequency_orders) AS log_frequency_orders,
  LN(1 + monetary_total) AS log_monetary_total,
  LN(1 + avg_order_value) AS log_avg_order_value,
  distinct_categories,
  share_app
)
OPTIONS (
  model_type = 'KMEANS',
  num_clusters = 5,
  kmeans_init_method = 'KMEANS++',
  standardize_features = TRUE,
  model_registry = 'VERTEX_AI',
  vertex_ai_model_id = 'customer_segments_model'
) AS
SELECT
  recency_days,
  frequency_orders,
  monetary_total,
  avg_order_value,
  distinct_categories,
  share_app
FROM customer_features
WHERE snapshot_date = (SELECT MAX(snapshot_date) FROM customer_features)
