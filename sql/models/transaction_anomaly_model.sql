-- transaction_anomaly_model: clusters of ordinary orders, to flag the unusual ones.
--
-- KMEANS on transaction_features (one row per order): basket, amount, discount, price ratio, time
-- of day, and the order against the customer's previous 90 days. ML.DETECT_ANOMALIES with this
-- model flags the orders farthest from their centroid (STRUCT(contamination AS contamination)).
--
-- Features are listed explicitly: no keys (order_id, customer_id), no dates or timestamps.
-- STANDARDIZE_FEATURES (the default, written out) puts amounts and counts on one scale; channel
-- and device are one-hot encoded; NULL history features (a customer's first order) become the
-- training mean, as BigQuery ML does.
--
-- Registered in the Vertex AI Model Registry as transaction_anomaly_model (model_registry,
-- vertex_ai_model_id) and served on its endpoint (sql/serving/, sql/gate/ for retraining).
-- No query parameters: the same statement runs unchanged on BigQuery and locally.
CREATE OR REPLACE MODEL transaction_anomaly_model
OPTIONS (
  model_type = 'KMEANS',
  num_clusters = 6,
  kmeans_init_method = 'KMEANS++',
  standardize_features = TRUE,
  model_registry = 'VERTEX_AI',
  vertex_ai_model_id = 'transaction_anomaly_model'
) AS
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
