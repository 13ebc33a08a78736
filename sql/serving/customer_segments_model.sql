-- customer_segments_model's online traffic: the instances the CRM sends to the segments endpoint.
--
-- One instance per customer of the newest customer snapshot (the customers active now), with
-- exactly the raw feature columns the model is trained on: the endpoint applies the model's
-- TRANSFORM (the logarithms) itself, as ML.PREDICT does. The traffic generator
-- (`lakehouse-ml traffic --model customer_segments_model`) samples these rows; the monitoring
-- report compares the logged instances with the model's training rows.
SELECT
  recency_days,
  frequency_orders,
  monetary_total,
  avg_order_value,
  distinct_categories,
  share_app
FROM customer_features
WHERE snapshot_date = (SELECT MAX(snapshot_date) FROM customer_features)
